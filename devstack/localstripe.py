"""localstripe (a stateful Stripe API server) as a child process of the test stack, for auto top-up.

localstripe keeps its state in one fixed file (/tmp/localstripe.pickle) and listens on every
interface; this launcher keeps the state in a file of our own (so two test runs on one machine do
not share customers, and a stopped server starts again with what it had: the "Stripe unreachable
and back" test) and listens on 127.0.0.1 only. Its access log names each request's Idempotency-Key,
so a test can see what the code under test sent.

One gap of localstripe 1.15.10 is filled, as Stripe behaves: a SetupIntent that succeeds attaches its
payment method to the SetupIntent's customer (localstripe only marks the SetupIntent succeeded), which
is how a tenant's card reaches the customer LAD created for it (POST /settings/payment-methods).
Nothing else of localstripe is changed.

    python -m devstack.localstripe --port 8420 --state .data/test/localstripe.pickle
"""
from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path

from aiohttp import web
from localstripe import resources
from localstripe.server import app

ACCESS_LOG_FORMAT = '%r %s idempotency_key="%{Idempotency-Key}i"'


def _attach_on_success() -> None:
    """Stripe: "When the SetupIntent succeeds, the PaymentMethod is attached to the Customer"."""
    confirm = resources.SetupIntent._attach_pm

    def attach_pm(self: resources.SetupIntent, pm: resources.PaymentMethod) -> None:
        confirm(self, pm)
        if self.status == "succeeded" and self.customer:
            pm.customer = self.customer

    resources.SetupIntent._attach_pm = attach_pm  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args()
    state: Path = args.state

    def load(store: resources.Store) -> None:
        if state.exists():
            with state.open("rb") as f:
                store.clear()
                store.update(pickle.load(f))

    def dump(store: resources.Store) -> None:
        partial = state.with_suffix(".partial")
        with partial.open("wb") as f:
            pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(state)  # a server killed mid-write keeps the previous state

    resources.Store.try_load_from_disk = load  # type: ignore[method-assign]
    resources.Store.dump_to_disk = dump  # type: ignore[method-assign]
    resources.store.try_load_from_disk()
    _attach_on_success()
    logger = logging.getLogger("aiohttp.access")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=logger, access_log_format=ACCESS_LOG_FORMAT,
                print=None)


if __name__ == "__main__":
    main()
