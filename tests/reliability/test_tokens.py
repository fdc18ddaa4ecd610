"""Token attacks test_oauth.py does not already cover: a key used after its retirement (the key file leaked,
or an old worker kept it), in a worker that loaded the rotation while the old key was still verifying."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudlayer.oauth.keys import rotate_keys
from cloudlayer.oauth.service import BearerError, OAuthService
from test_oauth import SCOPE, claims_for, make_config, sign


def test_token_signed_by_a_retired_key_after_its_verify_window_is_refused(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "var")
    service = OAuthService.from_config(cfg)
    try:
        client, _ = service.clients.add("mypinpad", [SCOPE])
        old = service.keyring.active
        header = {"alg": old.alg, "kid": old.kid, "typ": "at+jwt"}
        before = sign(header, claims_for(client.client_id), old.key)
        assert service.verify_bearer(f"Bearer {before}", SCOPE).client_id == client.client_id
        # Rotate with a 1 s verify window; this worker picks the rotation up while the old key still verifies.
        rotate_keys(cfg.var_path(cfg.oauth.keys_file), "ES256", token_lifetime=1, leeway=0)
        assert service.keyring.reload_for_unknown_kid()
        assert old.kid in service.keyring.verify_keys and service.keyring.active.kid != old.kid
        time.sleep(1.2)  # past verify_until: not a timing assertion, the state under test
        forged = sign(header, claims_for(client.client_id, jti="after-retirement"), old.key)
        for token in (forged, before):  # a fresh forgery, and a token already in the verified cache
            with pytest.raises(BearerError) as e:
                service.verify_bearer(f"Bearer {token}", SCOPE)
            assert e.value.status == 401 and e.value.error == "invalid_token"
    finally:
        service.close()
