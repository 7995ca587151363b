"""A client generated from the server's own API description, used the way
an integrator would: openapi-python-client (PyPI; `.ci/install` installs
it) turns /v1/openapi.json into a typed Python package, and this script
takes stock in, reads it, places and cancels an order, sends a bad event
and finds its dead letter, all through the generated functions and
models. A response the description does not match fails to parse.

Usage: python3 generated_client.py BASE_URL RUN_ID
"""

import importlib
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

url, run = sys.argv[1], sys.argv[2]
scratch = Path(tempfile.mkdtemp())
(scratch / "openapi.json").write_bytes(urllib.request.urlopen(f"{url}/v1/openapi.json").read())
subprocess.run(
    [
        "openapi-python-client", "generate",
        "--path", str(scratch / "openapi.json"),
        "--meta", "none",
        "--output-path", str(scratch / "stockflow_client"),
    ],
    check=True,
    capture_output=True,
)
sys.path.insert(0, str(scratch))

client_module = importlib.import_module("stockflow_client")
api = "stockflow_client.api."
post_events = importlib.import_module(api + "events.post_events")
get_level = importlib.import_module(api + "stock.get_level")
post_orders = importlib.import_module(api + "orders.place_order")
get_order = importlib.import_module(api + "orders.get_order")
cancel_order = importlib.import_module(api + "orders.cancel_order")
get_dead_letters = importlib.import_module(api + "dead_letters.list_dead_letters")
models = importlib.import_module("stockflow_client.models")

client = client_module.Client(base_url=url, raise_on_unexpected_status=True, timeout=30.0)
sku, store = f"GEN-{run}", f"S-{run}"
wait = "applied"


def event(n, kind, quantity, **more):
    return {
        "eventId": f"gen-{run}-{n}", "eventType": kind, "sku": sku,
        "locationId": store, "quantity": quantity, **more,
    }


def expect(what, got, wanted):
    if got != wanted:
        sys.exit(f"{what}: got {got!r}, wanted {wanted!r}")


# Stock in, and a sale: the receipt is the generated Receipt model.
receipt = post_events.sync(client=client, body=[event(1, "RECEIPT", 10), event(2, "SALE", 3)], wait=wait)
expect("receipt type", type(receipt).__name__, "Receipt")
expect("accepted", receipt.accepted, 2)

level = get_level.sync(client=client, sku=sku, location_id=store)
expect("level type", type(level).__name__, "Level")
expect("onHand", level.on_hand, 7)
expect("available", level.available, 7)

# An order holds 4; the level shows it reserved; a cancel gives it back.
order_id = f"gen-order-{run}"
body = models.OrderRequest.from_dict(
    {"orderId": order_id, "lines": [{"sku": sku, "locationId": store, "quantity": 4}]}
)
placed = post_orders.sync(client=client, body=body)
expect("order type", type(placed).__name__, "Order")
expect("order status", str(placed.status.value), "reserved")
expect("read back", str(get_order.sync(order_id, client=client).status.value), "reserved")
expect("reserved", get_level.sync(client=client, sku=sku, location_id=store).reserved, 4)
cancelled = cancel_order.sync(order_id, client=client, body={})
expect("cancelled", str(cancelled.status.value), "cancelled")
expect("reserved after cancel", get_level.sync(client=client, sku=sku, location_id=store).reserved, 0)

# A refused event comes back in the receipt and is kept as a dead letter.
refused = post_events.sync(client=client, body=event(3, "SALE", -5), wait=wait)
expect("refused accepted", refused.accepted, 0)
expect("refused errors", len(refused.errors), 1)
kept, after = [], None
while True:
    page = get_dead_letters.sync(client=client, limit=1000, **({"after": after} if after else {}))
    kept += [l for l in page.dead_letters if l.event_id == f"gen-{run}-3"]
    if not page.next_after:
        break
    after = page.next_after
# Kept with the raw payload, as sent.
expect("dead letters", [json.loads(l.payload) for l in kept], [event(3, "SALE", -5)])

print("generated client ok: onHand 7, order placed and cancelled, 1 dead letter")
