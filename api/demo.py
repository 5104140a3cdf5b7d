"""`make demo`: the Hypernian walkthrough through the official Stripe SDK against the running engine."""

from __future__ import annotations

import sys

from api import walkthrough
from api.commands import dev_key_path
from drawdown.settings import get_settings


def main() -> int:
    import stripe

    settings = get_settings()
    path = dev_key_path(settings)
    if not path.exists():
        print(f"no development key in {path}: start the engine with `make up` first", file=sys.stderr)
        return 1
    walkthrough.configure(stripe, f"http://{settings.api_host}:{settings.api_port}", path.read_text().strip())
    result = walkthrough.run(stripe)
    invoice = result["invoice"]
    print(f"\nfinalized invoice {invoice.id}: subtotal {invoice.subtotal}, amount due {invoice.amount_due} cents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
