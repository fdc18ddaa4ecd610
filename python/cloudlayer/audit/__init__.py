"""The tamper-evident audit log of administrative actions (PCI DSS req. 10.2): see log.py."""

from .log import GENESIS, AuditError, append
from .verify import VerifyResult, verify

__all__ = ["GENESIS", "AuditError", "VerifyResult", "append", "verify"]
