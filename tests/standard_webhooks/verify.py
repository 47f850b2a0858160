"""Verifies deliveries the relay made, with the official Standard Webhooks library.

Reads a JSON list of cases on stdin, each {"secret": "whsec_...", "headers": {...},
"body_b64": "..."}, and prints a JSON list of verdicts, one per case: true when
`Webhook(secret).verify(body, headers)` accepts the delivery, false when it raises.
Nothing here re-implements the check: it is the library's.
"""

import base64
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def verdict(case):
    body = base64.b64decode(case["body_b64"])
    try:
        Webhook(case["secret"]).verify(body, case["headers"], json_parse=False)
        return True
    except WebhookVerificationError:
        return False


json.dump([verdict(case) for case in json.load(sys.stdin)], sys.stdout)
