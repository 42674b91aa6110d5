"""Schemathesis hooks for the server's API: an `application/x-ndjson` body is sent as text."""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
