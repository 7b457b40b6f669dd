"""What tests/ and bench/ share: test audio made on the fly (`audiofiles`) and a real
`bentoml serve` in a subprocess (`server.ServedService`). Neither imports the other."""
