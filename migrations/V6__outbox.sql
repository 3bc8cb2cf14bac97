-- The transactional outbox: services insert events into realtime.outbox in their business
-- transaction; the server relays them, in order per topic, to the rooms and webhooks
-- subscribed to the topic, at least once. Each topic has a gap-free seq assigned under a row
-- lock on its counter (commit order = seq order), and each (subscription, topic) pair a cursor
-- that a relay advances in the same transaction that delivers to a room, or right after a
-- webhook accepted the events.

CREATE TABLE realtime.outbox_topics (
    topic      text        PRIMARY KEY,
    last_seq   bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE realtime.outbox_topics IS
    'One row per outbox topic: its sequence counter, locked by every writer until it commits.';

CREATE TABLE realtime.outbox (
    topic      text        NOT NULL,
    seq        bigint      NOT NULL,
    event      text        NOT NULL,
    payload    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, seq)
);
CREATE INDEX outbox_created_at_idx ON realtime.outbox (created_at);
COMMENT ON TABLE realtime.outbox IS
    'Outbox events. Insert topic, event and payload in the business transaction (or call '
    'realtime.outbox_publish); seq is assigned by a trigger. After commit the events are '
    'relayed in seq order to every subscription of the topic (realtime.outbox_subscriptions). '
    'Rows are kept 7 days (realtime.prune_outbox).';
COMMENT ON COLUMN realtime.outbox.topic IS
    'The ordering unit: 1-200 characters from A-Z a-z 0-9 _ . : - (for example orders:42, one '
    'topic per aggregate for per-aggregate order).';
COMMENT ON COLUMN realtime.outbox.seq IS 'Per-topic sequence number, gap-free, in commit order.';
COMMENT ON COLUMN realtime.outbox.event IS 'Event name, 1-100 characters from A-Z a-z 0-9 _ . : -';
COMMENT ON COLUMN realtime.outbox.payload IS 'At most 65536 bytes as JSON text.';

CREATE TABLE realtime.outbox_subscriptions (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic_pattern  text        NOT NULL,
    room           text,
    webhook_url    text,
    webhook_secret text,
    enabled        boolean     NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_subscriptions_pattern
        CHECK (length(topic_pattern) BETWEEN 1 AND 200 AND topic_pattern ~ '^[A-Za-z0-9_.:\-]*\*?$'),
    CONSTRAINT outbox_subscriptions_one_target
        CHECK ((room IS NULL) <> (webhook_url IS NULL)),
    CONSTRAINT outbox_subscriptions_room
        CHECK (length(room) BETWEEN 1 AND 200 AND room ~ '^[A-Za-z0-9_.:\-]+$'),
    CONSTRAINT outbox_subscriptions_webhook
        CHECK (webhook_url IS NULL
               OR (webhook_url ~ '^https?://' AND length(webhook_url) <= 2048
                   AND length(webhook_secret) BETWEEN 16 AND 256))
);
COMMENT ON TABLE realtime.outbox_subscriptions IS
    'Where outbox events go: topics matching topic_pattern (a topic, or a prefix ending in *) '
    'are relayed to a room (as room:message events, via realtime.publish) or POSTed to a '
    'webhook (JSON, signed with webhook_secret, Standard Webhooks headers, webhook-id '
    'outbox:<topic>:<seq>). A subscription receives the events committed after it was created.';

CREATE TABLE realtime.outbox_cursors (
    subscription_id bigint      NOT NULL REFERENCES realtime.outbox_subscriptions ON DELETE CASCADE,
    topic           text        NOT NULL,
    last_seq        bigint      NOT NULL,
    failures        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, topic)
);
CREATE INDEX outbox_cursors_topic_idx ON realtime.outbox_cursors (topic);
COMMENT ON TABLE realtime.outbox_cursors IS
    'How far each subscription has received each topic (last_seq). A webhook that fails waits '
    'until next_attempt_at (1 min, 5 min, 30 min, 2 h, then every 24 h) and blocks only its own '
    'topic, so the order within a topic holds.';

CREATE FUNCTION realtime.topic_matches(pattern text, topic text) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN right(pattern, 1) = '*'
                THEN starts_with(topic, left(pattern, -1))
                ELSE topic = pattern END
$$;

CREATE FUNCTION realtime.outbox_assign_seq() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_size int;
BEGIN
    IF NEW.topic IS NULL OR length(NEW.topic) NOT BETWEEN 1 AND 200
       OR NEW.topic !~ '^[A-Za-z0-9_.:\-]+$' THEN
        RAISE EXCEPTION 'realtime.outbox: invalid topic %', quote_literal(left(coalesce(NEW.topic, 'NULL'), 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'outbox',
                  COLUMN = 'topic', HINT = 'A topic is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF NEW.event IS NULL OR length(NEW.event) NOT BETWEEN 1 AND 100
       OR NEW.event !~ '^[A-Za-z0-9_.:\-]+$' THEN
        RAISE EXCEPTION 'realtime.outbox: invalid event %', quote_literal(left(coalesce(NEW.event, 'NULL'), 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'outbox',
                  COLUMN = 'event', HINT = 'An event name is 1-100 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF NEW.payload IS NULL THEN
        RAISE EXCEPTION 'realtime.outbox: payload must not be NULL'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'realtime', TABLE = 'outbox',
                  COLUMN = 'payload', HINT = 'Use ''{}'' for an event without data.';
    END IF;
    v_size := octet_length(NEW.payload::text);
    IF v_size > 65536 THEN
        RAISE EXCEPTION 'realtime.outbox: payload is % bytes as JSON text; the limit is 65536', v_size
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'outbox',
                  COLUMN = 'payload';
    END IF;
    INSERT INTO realtime.outbox_topics (topic) VALUES (NEW.topic) ON CONFLICT DO NOTHING;
    UPDATE realtime.outbox_topics t SET last_seq = t.last_seq + 1
    WHERE t.topic = NEW.topic
    RETURNING t.last_seq INTO NEW.seq;
    NEW.created_at := now();
    -- Subscriptions that match a topic new to them start right before this event.
    INSERT INTO realtime.outbox_cursors (subscription_id, topic, last_seq)
    SELECT s.id, NEW.topic, NEW.seq - 1
    FROM realtime.outbox_subscriptions s
    WHERE realtime.topic_matches(s.topic_pattern, NEW.topic)
    ON CONFLICT DO NOTHING;
    PERFORM pg_notify('triptrip_outbox', '');
    RETURN NEW;
END
$$;
CREATE TRIGGER outbox_assign_seq BEFORE INSERT ON realtime.outbox
    FOR EACH ROW EXECUTE FUNCTION realtime.outbox_assign_seq();

-- A new subscription starts at the current end of every matching topic.
CREATE FUNCTION realtime.outbox_subscription_start() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO realtime.outbox_cursors (subscription_id, topic, last_seq)
    SELECT NEW.id, t.topic, t.last_seq
    FROM realtime.outbox_topics t
    WHERE realtime.topic_matches(NEW.topic_pattern, t.topic);
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_subscription_start AFTER INSERT ON realtime.outbox_subscriptions
    FOR EACH ROW EXECUTE FUNCTION realtime.outbox_subscription_start();

CREATE FUNCTION realtime.outbox_publish(topic text, event text, payload jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE sql
AS $$
    INSERT INTO realtime.outbox AS o (topic, event, payload)
    VALUES (outbox_publish.topic, outbox_publish.event, outbox_publish.payload)
    RETURNING o.seq
$$;
COMMENT ON FUNCTION realtime.outbox_publish(text, text, jsonb) IS
    'Appends an event to the topic in the caller''s transaction; returns its seq.';

-- For relays: locks and returns up to p_limit cursors that have events to relay and are due,
-- with their subscription's target. The caller delivers in seq order, then advances the cursor
-- with realtime.outbox_advance (or records a failure with realtime.outbox_failed) and commits.
CREATE FUNCTION realtime.claim_outbox_cursors(p_limit int)
RETURNS TABLE (
    subscription_id bigint,
    topic           text,
    last_seq        bigint,
    room            text,
    webhook_url     text,
    webhook_secret  text,
    failures        int
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'realtime.claim_outbox_cursors: limit must be 1-10000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT c.subscription_id, c.topic, c.last_seq, s.room, s.webhook_url, s.webhook_secret,
           c.failures
    FROM realtime.outbox_cursors c
    JOIN realtime.outbox_topics t ON t.topic = c.topic
    JOIN realtime.outbox_subscriptions s ON s.id = c.subscription_id
    WHERE s.enabled AND t.last_seq > c.last_seq AND c.next_attempt_at <= now()
    ORDER BY c.next_attempt_at
    LIMIT p_limit
    FOR UPDATE OF c SKIP LOCKED;
END
$$;

CREATE FUNCTION realtime.outbox_advance(p_subscription bigint, p_topic text, p_seq bigint)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE realtime.outbox_cursors c
    SET last_seq = greatest(c.last_seq, p_seq), failures = 0, next_attempt_at = now(),
        last_error = NULL, updated_at = now()
    WHERE c.subscription_id = p_subscription AND c.topic = p_topic
$$;

CREATE FUNCTION realtime.outbox_failed(p_subscription bigint, p_topic text, p_error text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE realtime.outbox_cursors c
    SET failures = c.failures + 1,
        next_attempt_at = now() + realtime.retry_delay(c.failures + 1),
        last_error = left(p_error, 2000), updated_at = now()
    WHERE c.subscription_id = p_subscription AND c.topic = p_topic
$$;

CREATE FUNCTION realtime.prune_outbox(older_than interval DEFAULT '7 days') RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.prune_outbox: older_than must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Never an event some enabled subscription has not received yet.
    DELETE FROM realtime.outbox o
    WHERE o.created_at < now() - older_than
      AND NOT EXISTS (SELECT 1 FROM realtime.outbox_cursors c
                      JOIN realtime.outbox_subscriptions s ON s.id = c.subscription_id
                      WHERE c.topic = o.topic AND c.last_seq < o.seq AND s.enabled);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION realtime.prune_outbox(interval) IS
    'Deletes outbox events older than older_than that every enabled subscription has received; '
    'returns how many. Run hourly by the server.';

CREATE VIEW realtime.outbox_backlog AS
SELECT s.id AS subscription_id, s.topic_pattern, coalesce(s.room, s.webhook_url) AS target,
       c.topic, t.last_seq - c.last_seq AS pending, c.failures, c.next_attempt_at, c.last_error
FROM realtime.outbox_cursors c
JOIN realtime.outbox_subscriptions s ON s.id = c.subscription_id
JOIN realtime.outbox_topics t ON t.topic = c.topic;
COMMENT ON VIEW realtime.outbox_backlog IS
    'For operators: per subscription and topic, events not yet relayed and the last failure.';
