"""Reliability and security suite: chaos under load, hostile HTTP, tokens, soak, card-data scan.

Short forms run under pytest (tests/reliability/test_*.py); long forms and the figures table come from
`python tests/reliability/run.py`. Everything here drives the real host and simulator as subprocesses on
loopback (tests/txn_harness.py), bounded in count and time, and stops whatever it started.
"""
