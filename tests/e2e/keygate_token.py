"""The access-key token format (see proto/src/token.rs), for making
well-formed tokens that the store has never issued."""

import hashlib
import os


def well_formed_token():
    body = "kg-" + os.urandom(20).hex()
    return body + hashlib.sha256(body.encode()).hexdigest()[:8]
