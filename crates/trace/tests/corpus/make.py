#!/usr/bin/env python3
"""Writes the corpus captures (JSON lines) of choreo-trace's tests.

Each capture is traffic shaped like production's, written record by record:
flows cut while in flight, reactions finished after their handler, partitions
interleaved (effects before their causes), clocks that disagree, duplicates
and restarts, records from producers outside choreo, captures without
receipts. What the tracer must find in each is written by hand beside it, in
NAME.expected; tests/it/corpus.rs requires an exact match.

    python3 crates/trace/tests/corpus/make.py   # rewrites the .jsonl files

Ids are UUIDs that read as scenario / flow / event:
01930000-SSSS-7FFF-8EEE-000000000000.
"""
import json
import os

BASE = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z, µs
HERE = os.path.dirname(os.path.abspath(__file__))

TOPICS = {
    "OrderPlaced": "orders", "OrderCancelled": "orders",
    "PaymentCaptured": "payments", "PaymentFailed": "payments", "PaymentRefunded": "payments",
    "StockReserved": "inventory", "OutOfStock": "inventory", "OrderShipped": "shipping",
    "SignupRequested": "signups", "AccountCreated": "accounts", "AccountActivated": "accounts",
    "AccountClosed": "accounts", "KycRequested": "kyc", "DocumentsVerified": "kyc",
    "DocumentsRejected": "kyc", "ResubmissionRequested": "kyc",
    "FraudSuspected": "payments",
}


def uid(s, f, e):
    return f"01930000-{s:04x}-7{f:03x}-8{e:03x}-000000000000"


class Capture:
    def __init__(self, scenario):
        self.s = scenario
        self.lines = []
        self.offsets = {}
        self.receipt_n = 0

    def _offset(self, topic, partition):
        k = (topic, partition)
        self.offsets[k] = self.offsets.get(k, -1) + 1
        return self.offsets[k]

    def event(self, f, e, ty, source, ms, cause=None, corr=None, topic=None, partition=0,
              data=None, key=None, headers=None, ident=None):
        """An event: its id, as a dict kept for receipts and copies."""
        ev = {
            "id": ident or uid(self.s, f, e),
            "type": ty,
            "source": source,
            "topic": topic or TOPICS[ty],
            "correlation_id": corr or (cause["correlation_id"] if cause else None) or ident or uid(self.s, f, e),
            "time": BASE + int(ms * 1000),
            "content_type": "application/json",
            "data": data if data is not None else {"flow": f},
        }
        if key is not None:
            ev["key"] = key
        else:
            ev["key"] = ev["correlation_id"]
        if cause:
            ev["causation_id"] = cause["id"]
        if headers:
            ev["headers"] = headers
        return ev

    def put(self, ev, partition=0):
        """Writes a record (an event, or a copy of one) as read from `partition`."""
        rec = dict(ev)
        rec["partition"] = partition
        rec["offset"] = self._offset(rec["topic"], partition)
        self.lines.append(rec)
        return ev

    def receipt(self, service, handled, outcome, started_ms, took_ms, emitted=(), reason=None,
                attempts=None, partition=0):
        self.receipt_n += 1
        payload = {
            "service": service,
            "event_id": handled["id"],
            "event_type": handled["type"],
            "correlation_id": handled["correlation_id"],
            "topic": handled["topic"],
            "partition": 0,
            "offset": 0,
            "outcome": outcome,
            "attempts": attempts if attempts is not None else (0 if outcome in ("duplicate", "ignored") else 1),
        }
        if reason is not None:
            payload["reason"] = reason
        payload["started"] = BASE + int(started_ms * 1000)
        payload["duration_us"] = int(took_ms * 1000)
        if emitted:
            payload["emitted"] = [e["id"] for e in emitted]
        rec = {
            "id": f"01930000-{self.s:04x}-7fff-8{self.receipt_n:03x}-000000000000",
            "type": "choreo.Receipt",
            "source": service,
            "topic": "choreo.receipts",
            "key": handled["key"],
            "correlation_id": handled["correlation_id"],
            "causation_id": handled["id"],
            "time": BASE + int((started_ms + took_ms) * 1000),
            "content_type": "application/json",
            "data": payload,
        }
        return self.put(rec, partition)

    def dead_letter(self, ev, service, reason, attempts, at_ms, partition=0):
        """The copy of `ev` on its dead-letter topic."""
        copy = dict(ev)
        copy["topic"] = ev["topic"] + ".dlq"
        copy["headers"] = list(ev.get("headers", [])) + [
            ["choreo-dlq-reason", reason],
            ["choreo-dlq-attempts", str(attempts)],
            ["choreo-dlq-topic", ev["topic"]],
            ["choreo-dlq-partition", "0"],
            ["choreo-dlq-offset", "0"],
            ["choreo-dlq-service", service],
            ["choreo-dlq-time", rfc3339(BASE + int(at_ms * 1000))],
        ]
        return self.put(copy, partition)

    def raw(self, rec):
        self.lines.append(rec)

    def write(self, name):
        with open(os.path.join(HERE, name + ".jsonl"), "w") as out:
            for rec in self.lines:
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")


def rfc3339(us):
    import datetime
    t = datetime.datetime.fromtimestamp(us // 1_000_000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


def in_flight():
    """A capture cut from a running order saga: finished flows and flows in flight."""
    c = Capture(1)
    # F1 shipped, every receipt.
    p = c.event(1, 1, "OrderPlaced", "checkout", 0)
    k = c.event(1, 2, "PaymentCaptured", "payment", 12, p)
    r = c.event(1, 3, "StockReserved", "inventory", 25, k)
    s = c.event(1, 4, "OrderShipped", "shipping", 40, r)
    c.put(p); c.receipt("payment", p, "acked", 2, 10, [k])
    c.put(k); c.receipt("inventory", k, "acked", 14, 11, [r])
    c.put(r); c.receipt("shipping", r, "acked", 27, 13, [s])
    c.put(s); c.receipt("notifications", s, "acked", 42, 1)
    # F2 cancelled.
    p = c.event(2, 1, "OrderPlaced", "checkout", 2000)
    x = c.event(2, 2, "PaymentFailed", "payment", 2015, p)
    cancelled = c.event(2, 3, "OrderCancelled", "checkout", 2030, x)
    c.put(p); c.receipt("payment", p, "acked", 2001, 14, [x])
    c.put(x); c.receipt("checkout", x, "acked", 2016, 14, [cancelled])
    c.put(cancelled); c.receipt("notifications", cancelled, "acked", 2031, 1)
    # F3: payment acked at once; the provider's callback has not come yet (5 s).
    p = c.event(3, 1, "OrderPlaced", "checkout", 8000)
    c.put(p); c.receipt("payment", p, "acked", 8001, 9)
    # F4: paid; inventory has not handled it yet (3 s). Its partition was
    # read ahead of the orders' one: the child comes first.
    p = c.event(4, 1, "OrderPlaced", "checkout", 9000)
    k = c.event(4, 2, "PaymentCaptured", "payment", 9200, p)
    c.put(k, 1); c.put(p); c.receipt("payment", p, "acked", 9001, 199, [k])
    # F5 shipped; notifications' receipt not yet (the flow's minute runs).
    p = c.event(5, 1, "OrderPlaced", "checkout", 9500)
    k = c.event(5, 2, "PaymentCaptured", "payment", 9600, p)
    r = c.event(5, 3, "StockReserved", "inventory", 9700, k)
    s = c.event(5, 4, "OrderShipped", "shipping", 9900, r)
    c.put(p); c.receipt("payment", p, "acked", 9501, 99, [k])
    c.put(k); c.receipt("inventory", k, "acked", 9601, 99, [r])
    c.put(r); c.receipt("shipping", r, "acked", 9701, 199, [s])
    c.put(s)
    # F6: placed a moment ago, nothing else yet.
    c.put(c.event(6, 1, "OrderPlaced", "checkout", 9990))
    # The newest record: F2's cancellation delivered again to notifications,
    # which skipped it (it had handled it).
    c.receipt("notifications", cancelled, "duplicate", 10000, 0)
    c.write("in-flight")


def async_reactions():
    """Signup with KYC: reactions a person completes hours after the handler acked."""
    c = Capture(2)
    H = 3_600_000
    # S1: rejected, re-uploaded 20 h later, verified, activated.
    s = c.event(1, 1, "SignupRequested", "web", 0)
    a = c.event(1, 2, "AccountCreated", "accounts", 10, s)
    k = c.event(1, 3, "KycRequested", "accounts", 10, s)
    j = c.event(1, 4, "DocumentsRejected", "kyc", 5 * 60_000, k)
    q = c.event(1, 5, "ResubmissionRequested", "accounts", 5 * 60_000 + 900, j)
    k2 = c.event(1, 6, "KycRequested", "kyc", 20 * H, q)
    v = c.event(1, 7, "DocumentsVerified", "kyc", 20 * H + 2 * 60_000, k2)
    z = c.event(1, 8, "AccountActivated", "accounts", 20 * H + 2 * 60_000 + 500, v)
    c.put(s); c.receipt("accounts", s, "acked", 1, 9, [a, k])
    c.put(a); c.receipt("mailer", a, "acked", 11, 30)
    c.put(k); c.receipt("kyc", k, "acked", 11, 5)
    c.put(j); c.receipt("accounts", j, "acked", 5 * 60_000 + 1, 899, [q])
    c.put(q); c.receipt("kyc", q, "acked", 5 * 60_000 + 901, 4)
    c.put(k2); c.receipt("kyc", k2, "acked", 20 * H + 1, 5)
    c.put(v); c.receipt("accounts", v, "acked", 20 * H + 2 * 60_000 + 1, 499, [z])
    c.put(z); c.receipt("mailer", z, "acked", 20 * H + 2 * 60_000 + 501, 30)
    # S2: rejected; the customer never uploads again (24 h pass).
    t = 1 * H
    s = c.event(2, 1, "SignupRequested", "web", t)
    a = c.event(2, 2, "AccountCreated", "accounts", t + 10, s)
    k = c.event(2, 3, "KycRequested", "accounts", t + 10, s)
    j = c.event(2, 4, "DocumentsRejected", "kyc", t + 3 * 60_000, k)
    q = c.event(2, 5, "ResubmissionRequested", "accounts", t + 3 * 60_000 + 700, j)
    c.put(s); c.receipt("accounts", s, "acked", t + 1, 9, [a, k])
    c.put(a); c.receipt("mailer", a, "acked", t + 11, 30)
    c.put(k); c.receipt("kyc", k, "acked", t + 11, 5)
    c.put(j); c.receipt("accounts", j, "acked", t + 3 * 60_000 + 1, 699, [q])
    c.put(q); c.receipt("kyc", q, "acked", t + 3 * 60_000 + 701, 4)
    # S3: accounts' receipt lists two events that never arrived.
    t = 2 * H
    s = c.event(3, 1, "SignupRequested", "web", t)
    lost_a = c.event(3, 2, "AccountCreated", "accounts", t + 10, s)
    lost_k = c.event(3, 3, "KycRequested", "accounts", t + 10, s)
    c.put(s); c.receipt("accounts", s, "acked", t + 1, 9, [lost_a, lost_k])
    # S4: a minute old; kyc acked the request, the documents are being checked (10 min).
    t = 28 * H - 60_000
    s = c.event(4, 1, "SignupRequested", "web", t)
    a = c.event(4, 2, "AccountCreated", "accounts", t + 10, s)
    k = c.event(4, 3, "KycRequested", "accounts", t + 10, s)
    c.put(s); c.receipt("accounts", s, "acked", t + 1, 9, [a, k])
    c.put(a); c.receipt("mailer", a, "acked", t + 11, 30)
    c.put(k); c.receipt("kyc", k, "acked", t + 11, 5)
    c.write("async-reactions")


def interleaved():
    """Two partitions read in turn: effects before causes, a receipt twice, a replay."""
    c = Capture(3)
    # I1 shipped, read backwards.
    p = c.event(1, 1, "OrderPlaced", "checkout", 0)
    k = c.event(1, 2, "PaymentCaptured", "payment", 10, p)
    r = c.event(1, 3, "StockReserved", "inventory", 20, k)
    s = c.event(1, 4, "OrderShipped", "shipping", 30, r)
    c.put(s, 1); c.receipt("notifications", s, "acked", 31, 1, partition=1)
    c.put(r, 1); c.receipt("shipping", r, "acked", 21, 9, [s], partition=1)
    c.receipt("shipping", r, "acked", 21, 9, [s], partition=1)  # the same receipt, delivered twice
    c.put(k); c.receipt("inventory", k, "acked", 11, 9, [r])
    c.put(p); c.receipt("payment", p, "acked", 1, 9, [k])
    # I2 both branches, and both followed.
    p = c.event(2, 1, "OrderPlaced", "checkout", 100)
    a = c.event(2, 2, "PaymentCaptured", "payment", 110, p)
    b = c.event(2, 3, "PaymentFailed", "payment", 110, p)
    x = c.event(2, 4, "OrderCancelled", "checkout", 120, b)
    r = c.event(2, 5, "StockReserved", "inventory", 125, a)
    s = c.event(2, 6, "OrderShipped", "shipping", 140, r)
    c.put(b, 1); c.put(x, 1); c.put(p); c.put(a); c.put(r); c.put(s)
    c.receipt("payment", p, "acked", 101, 9, [a, b])
    c.receipt("checkout", b, "acked", 111, 9, [x])
    c.receipt("inventory", a, "acked", 111, 14, [r])
    c.receipt("shipping", r, "acked", 126, 14, [s])
    c.receipt("notifications", x, "acked", 121, 1)
    c.receipt("notifications", s, "acked", 141, 1)
    # I3: shipping dead-lettered StockReserved; replayed two minutes later, shipped.
    p = c.event(3, 1, "OrderPlaced", "checkout", 200)
    k = c.event(3, 2, "PaymentCaptured", "payment", 210, p)
    r = c.event(3, 3, "StockReserved", "inventory", 220, k)
    s = c.event(3, 4, "OrderShipped", "shipping", 120_230, r)
    c.dead_letter(r, "shipping", "handler failed after 3 attempts: carrier API unavailable", 3, 290, 1)
    c.put(p); c.put(k); c.put(r)
    c.receipt("payment", p, "acked", 201, 9, [k])
    c.receipt("inventory", k, "acked", 211, 9, [r])
    c.receipt("shipping", r, "dead_lettered", 221, 69, reason="handler failed after 3 attempts: carrier API unavailable", attempts=3)
    replayed = dict(r)
    replayed["headers"] = [["choreo-replay-count", "1"]]
    c.put(replayed)
    c.receipt("shipping", r, "acked", 120_221, 9, [s])
    c.put(s); c.receipt("notifications", s, "acked", 120_231, 1)
    # I4: payment gave up on the order.
    p = c.event(4, 1, "OrderPlaced", "checkout", 300)
    c.put(p)
    c.receipt("payment", p, "dead_lettered", 301, 50, reason="decode error: missing field `amount`", attempts=1)
    # I5: out of stock, refunded, cancelled; the cancellation read first.
    p = c.event(5, 1, "OrderPlaced", "checkout", 400)
    k = c.event(5, 2, "PaymentCaptured", "payment", 410, p)
    o = c.event(5, 3, "OutOfStock", "inventory", 420, k)
    f = c.event(5, 4, "PaymentRefunded", "payment", 430, o)
    x = c.event(5, 5, "OrderCancelled", "checkout", 440, f)
    c.put(x); c.put(f, 1); c.put(o, 1); c.put(k, 1); c.put(p)
    c.receipt("notifications", x, "acked", 441, 1)
    c.receipt("checkout", f, "acked", 431, 9, [x])
    c.receipt("payment", o, "acked", 421, 9, [f])
    c.receipt("inventory", k, "acked", 411, 9, [o])
    c.receipt("payment", p, "acked", 401, 9, [k])
    c.write("interleaved")


def skewed_clocks():
    """Hosts whose clocks disagree, and a slow reaction."""
    c = Capture(4)
    # K1: shipping's clock is 2 s behind.
    p = c.event(1, 1, "OrderPlaced", "checkout", 0)
    k = c.event(1, 2, "PaymentCaptured", "payment", 10, p)
    r = c.event(1, 3, "StockReserved", "inventory", 20, k)
    s = c.event(1, 4, "OrderShipped", "shipping", 30 - 2000, r)
    c.put(p); c.receipt("payment", p, "acked", 1, 9, [k])
    c.put(k); c.receipt("inventory", k, "acked", 11, 9, [r])
    c.put(r); c.receipt("shipping", r, "acked", 21 - 2000, 9, [s])
    c.put(s); c.receipt("notifications", s, "acked", 31, 1)
    # K2: inventory's clock is 4 ms ahead, less than a hop takes: jitter that
    # changes no order of cause and effect, and is no finding.
    p = c.event(2, 1, "OrderPlaced", "checkout", 1000)
    f = c.event(2, 2, "PaymentCaptured", "payment", 1010, p)
    r = c.event(2, 3, "StockReserved", "inventory", 1020 + 4, f)
    s = c.event(2, 4, "OrderShipped", "shipping", 1030, r)
    for e in (p, f, r, s):
        c.put(e)
    c.receipt("payment", p, "acked", 1001, 9, [f])
    c.receipt("inventory", f, "acked", 1011 + 4, 9, [r])
    c.receipt("shipping", r, "acked", 1021, 9, [s])
    c.receipt("notifications", s, "acked", 1031, 1)
    # K3: shipping's carrier took 70 s: the reaction is late, and so is the flow.
    p = c.event(3, 1, "OrderPlaced", "checkout", 2000)
    k = c.event(3, 2, "PaymentCaptured", "payment", 2010, p)
    r = c.event(3, 3, "StockReserved", "inventory", 2020, k)
    s = c.event(3, 4, "OrderShipped", "shipping", 72_020, r)
    c.put(p); c.receipt("payment", p, "acked", 2001, 9, [k])
    c.put(k); c.receipt("inventory", k, "acked", 2011, 9, [r])
    c.put(r); c.receipt("shipping", r, "acked", 2021, 69_999, [s])
    c.put(s); c.receipt("notifications", s, "acked", 72_021, 1)
    c.write("skewed-clocks")


def restarts():
    """At-least-once delivery and services restarted mid-handling."""
    c = Capture(5)
    # D1: every record delivered twice.
    p = c.event(1, 1, "OrderPlaced", "checkout", 0)
    x = c.event(1, 2, "PaymentFailed", "payment", 10, p)
    k = c.event(1, 3, "OrderCancelled", "checkout", 20, x)
    for e in (p, x, k):
        c.put(e); c.put(e)
    for _ in range(2):
        c.receipt("payment", p, "acked", 1, 9, [x])
        c.receipt("checkout", x, "acked", 11, 9, [k])
        c.receipt("notifications", k, "acked", 21, 1)
    # D2: payment restarted, forgot it had charged, and charged again: two acks,
    # two PaymentCaptured; inventory and shipping did their part, twice.
    p = c.event(2, 1, "OrderPlaced", "checkout", 100)
    k1 = c.event(2, 2, "PaymentCaptured", "payment", 110, p)
    k2 = c.event(2, 3, "PaymentCaptured", "payment", 2_110, p)
    r1 = c.event(2, 4, "StockReserved", "inventory", 120, k1)
    r2 = c.event(2, 5, "StockReserved", "inventory", 2_120, k2)
    s1 = c.event(2, 6, "OrderShipped", "shipping", 130, r1)
    s2 = c.event(2, 7, "OrderShipped", "shipping", 2_130, r2)
    for e in (p, k1, r1, s1, k2, r2, s2):
        c.put(e)
    c.receipt("payment", p, "acked", 101, 9, [k1])
    c.receipt("payment", p, "acked", 2_101, 9, [k2])
    c.receipt("inventory", k1, "acked", 111, 9, [r1])
    c.receipt("inventory", k2, "acked", 2_111, 9, [r2])
    c.receipt("shipping", r1, "acked", 121, 9, [s1])
    c.receipt("shipping", r2, "acked", 2_121, 9, [s2])
    c.receipt("notifications", s1, "acked", 131, 1)
    c.receipt("notifications", s2, "acked", 2_131, 1)
    # D3: inventory was killed after publishing, before its ack: redelivered,
    # handled again under new ids. Only the second handling has a receipt.
    p = c.event(3, 1, "OrderPlaced", "checkout", 200)
    k = c.event(3, 2, "PaymentCaptured", "payment", 210, p)
    r1 = c.event(3, 3, "StockReserved", "inventory", 220, k)
    r2 = c.event(3, 4, "StockReserved", "inventory", 1_500, k)
    s1 = c.event(3, 5, "OrderShipped", "shipping", 230, r1)
    s2 = c.event(3, 6, "OrderShipped", "shipping", 1_510, r2)
    for e in (p, k, r1, s1, r2, s2):
        c.put(e)
    c.receipt("payment", p, "acked", 201, 9, [k])
    c.receipt("inventory", k, "acked", 1_491, 9, [r2])
    c.receipt("shipping", r1, "acked", 221, 9, [s1])
    c.receipt("shipping", r2, "acked", 1_501, 9, [s2])
    c.receipt("notifications", s1, "acked", 231, 1)
    c.receipt("notifications", s2, "acked", 1_511, 1)
    c.write("restarts")


def foreign():
    """Producers outside choreo: a CloudEvents SDK, plain Kafka clients, broken records."""
    c = Capture(6)
    # X1: the web shop publishes orders with its CloudEvents SDK (a URI source, its own ids).
    p = c.event(1, 1, "OrderPlaced", "https://shop.example.com/checkout", 0, ident="shop-order-1001",
                data={"order_id": 1001})
    k = c.event(1, 2, "PaymentCaptured", "payment", 10, p)
    r = c.event(1, 3, "StockReserved", "inventory", 20, k)
    s = c.event(1, 4, "OrderShipped", "shipping", 30, r)
    for e in (p, k, r, s):
        c.put(e)
    c.receipt("payment", p, "acked", 1, 9, [k])
    c.receipt("inventory", k, "acked", 11, 9, [r])
    c.receipt("shipping", r, "acked", 21, 9, [s])
    c.receipt("notifications", s, "acked", 31, 1)
    # X2: two records from a plain Kafka client: no CloudEvents headers, no flow.
    for n in range(2):
        c.raw({"id": f"orders/3/{n}", "type": "choreo.unknown", "source": "", "topic": "orders",
               "time": BASE + 40_000 + n, "content_type": "application/json", "data": {"legacy": n},
               "partition": 3, "offset": n})
    # X3: a record no service can read (ce_time broken); every group reading
    # `orders` dead-letters it.
    bad = c.event(3, 1, "OrderPlaced", "checkout", 100,
                  headers=[["choreo-malformed", "header 'ce_time' is not RFC 3339: 'yesterday'"]])
    c.put(bad)
    why = "malformed record: header 'ce_time' is not RFC 3339: 'yesterday'"
    c.receipt("payment", bad, "dead_lettered", 101, 0.1, reason=why, attempts=0)
    c.receipt("notifications", bad, "dead_lettered", 102, 0.1, reason=why, attempts=0)
    c.dead_letter(bad, "payment", why, 0, 101)
    c.dead_letter(bad, "notifications", why, 0, 102)
    # X4: payment publishes PaymentCaptured on `orders`; notifications, which
    # reads `orders`, ignores it (it routes no handler for it).
    p = c.event(4, 1, "OrderPlaced", "checkout", 200)
    k = c.event(4, 2, "PaymentCaptured", "payment", 210, p, topic="orders")
    c.put(p); c.put(k)
    c.receipt("payment", p, "acked", 201, 9, [k])
    c.receipt("notifications", k, "ignored", 211, 0)
    # X5: payment answers with an event type the topology does not know.
    p = c.event(5, 1, "OrderPlaced", "checkout", 300)
    z = c.event(5, 2, "FraudSuspected", "payment", 310, p)
    c.put(p); c.put(z)
    c.receipt("payment", p, "acked", 301, 9, [z])
    # X6: a fraud checker nobody declared handles orders too; the flow ends well.
    p = c.event(6, 1, "OrderPlaced", "checkout", 400)
    x = c.event(6, 2, "PaymentFailed", "payment", 410, p)
    k = c.event(6, 3, "OrderCancelled", "checkout", 420, x)
    for e in (p, x, k):
        c.put(e)
    c.receipt("payment", p, "acked", 401, 9, [x])
    c.receipt("fraud-check", p, "acked", 402, 3)
    c.receipt("checkout", x, "acked", 411, 9, [k])
    c.receipt("notifications", k, "acked", 421, 1)
    c.write("foreign")


def no_receipts():
    """Events only: receipts switched off, or their topic not captured."""
    c = Capture(7)
    # N1 shipped.
    p = c.event(1, 1, "OrderPlaced", "checkout", 0)
    k = c.event(1, 2, "PaymentCaptured", "payment", 10, p)
    r = c.event(1, 3, "StockReserved", "inventory", 20, k)
    s = c.event(1, 4, "OrderShipped", "shipping", 30, r)
    for e in (p, k, r, s):
        c.put(e)
    # N2: paid; inventory never reacted.
    p = c.event(2, 1, "OrderPlaced", "checkout", 100)
    k = c.event(2, 2, "PaymentCaptured", "payment", 110, p)
    c.put(p); c.put(k)
    # N3: shipping dead-lettered; only the copy on `inventory.dlq` tells.
    p = c.event(3, 1, "OrderPlaced", "checkout", 200)
    k = c.event(3, 2, "PaymentCaptured", "payment", 210, p)
    r = c.event(3, 3, "StockReserved", "inventory", 220, k)
    for e in (p, k, r):
        c.put(e)
    c.dead_letter(r, "shipping", "handler failed after 3 attempts: carrier API unavailable", 3, 300)
    # N4: the capture began after this order was placed and paid.
    placed = uid(7, 4, 1)
    missing = {"id": uid(7, 4, 2), "correlation_id": placed}
    r = c.event(4, 3, "StockReserved", "inventory", 320, missing, corr=placed)
    s = c.event(4, 4, "OrderShipped", "shipping", 330, r)
    c.put(r); c.put(s)
    # N5: nothing after the order: payment never answered.
    c.put(c.event(5, 1, "OrderPlaced", "checkout", 400))
    c.write("no-receipts")


if __name__ == "__main__":
    in_flight()
    async_reactions()
    interleaved()
    skewed_clocks()
    restarts()
    foreign()
    no_receipts()
