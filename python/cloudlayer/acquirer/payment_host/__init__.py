"""The HTTPS/JSON payment host (docs/payment-host.md): its wire format, our OAuth 2.0 client with its token cache,
the connector, and the simulator's side of it."""
