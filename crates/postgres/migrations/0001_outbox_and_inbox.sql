-- choreo-postgres, migration 1: the outbox, its lanes and its dead rows, and the inbox.
--
-- Placeholders, replaced by the configured names (PgConfig::tables) before
-- the SQL runs: {outbox}, {outbox_dead}, {lanes}, {inbox} (quoted, schema-
-- qualified table names), {outbox_pending_index}, {outbox_sent_index},
-- {inbox_handled_index}, {notify_trigger} (index and trigger names),
-- {notify_function}, {channel} (the NOTIFY channel: the outbox's bare name)
-- and {lane_count} (PgConfig::lanes).

-- One row per event a transaction emitted, in the envelope's fields.
-- `seq` orders the rows; `lane` is the event's key hashed among the lanes
-- (Kafka's murmur2, as the bus partitions), so one key's events share a lane.
CREATE TABLE {outbox} (
    seq            bigserial   PRIMARY KEY,
    lane           integer     NOT NULL,
    id             text        NOT NULL,
    event_type     text        NOT NULL,
    source         text        NOT NULL,
    topic          text        NOT NULL,
    key            bytea,
    correlation_id text        NOT NULL,
    causation_id   text,
    time_us        bigint      NOT NULL,
    traceparent    text,
    tracestate     text,
    content_type   text        NOT NULL,
    data           bytea       NOT NULL,
    header_names   text[]      NOT NULL DEFAULT ARRAY[]::text[],
    header_values  bytea[]     NOT NULL DEFAULT ARRAY[]::bytea[],
    -- How the row encodes the envelope; a relay refuses (moves aside) a
    -- format it does not know.
    format         smallint    NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set when the relay published the row; sent rows are pruned after the
    -- retention period.
    sent_at        timestamptz
);
CREATE INDEX {outbox_pending_index} ON {outbox} (lane, seq) WHERE sent_at IS NULL;
CREATE INDEX {outbox_sent_index} ON {outbox} (sent_at) WHERE sent_at IS NOT NULL;

-- Rows the relay moved aside: they no longer decode, or the bus refuses them
-- for good. Never retried; `reason` says why.
CREATE TABLE {outbox_dead} (
    seq            bigint      PRIMARY KEY,
    lane           integer,
    id             text,
    event_type     text,
    source         text,
    topic          text,
    key            bytea,
    correlation_id text,
    causation_id   text,
    time_us        bigint,
    traceparent    text,
    tracestate     text,
    content_type   text,
    data           bytea,
    header_names   text[],
    header_values  bytea[],
    format         smallint,
    created_at     timestamptz,
    reason         text        NOT NULL,
    moved_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per lane. A relay locks the lanes it publishes (FOR UPDATE SKIP
-- LOCKED) for the length of a batch, so each lane has one relay at a time;
-- the lock goes with the relay's transaction, so a crashed relay's lanes
-- are free again as soon as the server notices the connection is gone.
CREATE TABLE {lanes} (
    lane integer PRIMARY KEY
);
INSERT INTO {lanes} (lane) SELECT generate_series(0, {lane_count} - 1);

-- The events each service handled, written in the handler's transaction.
CREATE TABLE {inbox} (
    service    text        NOT NULL,
    event_id   text        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (service, event_id)
);
CREATE INDEX {inbox_handled_index} ON {inbox} (handled_at);

-- Wakes the relays (LISTEN {channel}) when a transaction that wrote to the
-- outbox commits: NOTIFY is delivered at commit, once per transaction.
CREATE FUNCTION {notify_function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER {notify_trigger} AFTER INSERT ON {outbox}
    FOR EACH STATEMENT EXECUTE FUNCTION {notify_function}();
