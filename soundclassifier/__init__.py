"""The core of the sound classifier: bytes -> decoded audio -> features -> model -> predictions.

Imported by serving (service.py, the gRPC front door, the page, batch jobs) and by training;
imports neither of them.
"""
