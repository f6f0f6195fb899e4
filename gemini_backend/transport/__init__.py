"""The HTTP layer the Google backends share: a REST client that keeps the service's error
message (``http``), API-key and OAuth sessions (``google_auth``), and retry with backoff
(``retry``).

Nothing is re-exported here: a backend imports the module it needs, so importing one does not
load the others' dependencies.
"""
