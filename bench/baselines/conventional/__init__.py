"""The conventional host of the same contract: what a team would write with the usual libraries.

FastAPI on uvicorn (uvloop, httptools), pydantic models, PyJWT (ES256 via cryptography) verifying every
bearer token, pyemv for the EMV TLV, pyiso8583 for the acquirer's 0200/0210, SQLite in WAL mode with
synchronous=FULL written by one writer thread (PENDING committed before the acquirer sees the message,
COMPLETED before the caller sees the answer). A bench baseline (bench/README.md): it imports nothing from
cloudlayer, so it stays the same yardstick whatever the host's code becomes.
"""
