import cloudlayer._native as native


def test_native_module_imports() -> None:
    assert native.__version__ == "0.1.0"
