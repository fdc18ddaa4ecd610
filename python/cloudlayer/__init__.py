"""CloudLayer: a transaction processing host for SoftPOS platforms (Mypinpad).

Where a transaction goes, by module:
  transactions/route.py   HTTP face of POST /transaction/process
  transactions/flow.py    auth'd request -> claim -> acquirer -> complete
  store/                  the exactly-once dedup store (LMDB)
  acquirer/               ISO 8583 link to the acquirer, simulator, SAF reversals
  oauth/                  token endpoint and bearer verification
"""

__version__ = "0.1.0"
