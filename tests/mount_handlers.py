"""A user handler for `fpol mount --handler tests/mount_handlers.py:vault` (test_mount.py).

It refuses reads of files named denied.key with EPERM and records every event it is shown
to the file named by $FPOL_TEST_HANDLER_LOG, so the test can check what a handler gets."""

import json
import os


def vault(event):
    log = os.environ.get("FPOL_TEST_HANDLER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(event) + "\n")
    if event["path"].endswith("/denied.key"):
        return "EPERM"
    if event["path"].endswith("/broken.key"):
        raise RuntimeError("handler bug")
    return None
