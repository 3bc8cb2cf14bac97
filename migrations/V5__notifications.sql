-- Notifications (seed chapter 5): services insert rows in their own transactions; routing to
-- channels happens in the same transaction, so a committed notification always has its
-- deliveries. In-app delivery follows the WAL (realtime.notifications is in the publication);
-- outside channels (push, email, sms, webhook) are rows in realtime.notification_deliveries that
-- dispatchers on any node claim with FOR UPDATE SKIP LOCKED, woken by one coalesced NOTIFY per
-- transaction on the channel triptrip_deliveries.

-- ---------------------------------------------------------------------------------------------
-- Configuration: channels and notification types
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.notification_channels (
    channel      text    PRIMARY KEY,
    enabled      boolean NOT NULL DEFAULT true,
    max_retries  int     NOT NULL,
    CONSTRAINT notification_channels_channel_known
        CHECK (channel IN ('in_app', 'push', 'email', 'sms', 'webhook')),
    CONSTRAINT notification_channels_max_retries CHECK (max_retries BETWEEN 0 AND 5)
);
COMMENT ON TABLE realtime.notification_channels IS
    'The delivery channels. A disabled channel gets no new deliveries (not even for critical '
    'notifications). A delivery that meets a transient error is retried up to max_retries '
    'times, after 1 min, 5 min, 30 min, 2 h and 24 h (realtime.retry_delay); then it fails. '
    'In-app deliveries are not retried: they wait in the table until the user is back.';
INSERT INTO realtime.notification_channels (channel, max_retries) VALUES
    ('in_app', 0), ('push', 3), ('email', 5), ('sms', 3), ('webhook', 5);

CREATE TABLE realtime.notification_types (
    type           text     PRIMARY KEY,
    channels       text[]   NOT NULL,
    priority       text     NOT NULL,
    template       text     NOT NULL,
    title_template text     NOT NULL,
    body_template  text     NOT NULL,
    ttl            interval NOT NULL DEFAULT '7 days',
    enabled        boolean  NOT NULL DEFAULT true,
    CONSTRAINT notification_types_type_format
        CHECK (length(type) BETWEEN 1 AND 100 AND type ~ '^[a-z0-9_.:\-]+$'),
    CONSTRAINT notification_types_channels_known
        CHECK (channels <@ ARRAY['in_app', 'push', 'email', 'sms', 'webhook']
               AND cardinality(channels) >= 1),
    CONSTRAINT notification_types_priority
        CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    CONSTRAINT notification_types_ttl_positive CHECK (ttl > interval '0')
);
COMMENT ON TABLE realtime.notification_types IS
    'Notification types: which channels a notification of the type goes to, its default '
    'priority, its templates and how long it is worth delivering (ttl). A disabled type is not '
    'stored at all: inserting one is a no-op.';
COMMENT ON COLUMN realtime.notification_types.template IS
    'Template name, passed to providers that have their own templates.';
COMMENT ON COLUMN realtime.notification_types.title_template IS
    'Title; {{key}} is replaced by the payload''s top-level field key (text as is, other JSON '
    'as JSON), a missing key by nothing.';
COMMENT ON COLUMN realtime.notification_types.body_template IS 'Body, like title_template.';
INSERT INTO realtime.notification_types
    (type, channels, priority, template, title_template, body_template) VALUES
    ('booking_confirmed', '{in_app,push,email}', 'high', 'booking_confirmation',
     'Booking confirmed', 'Your booking {{booking_id}} is confirmed.'),
    ('price_alert', '{in_app,push}', 'medium', 'price_alert',
     'Price alert', '{{item}} is now {{price}} {{currency}}.'),
    ('trip_update', '{in_app}', 'low', 'trip_update',
     'Trip updated', '{{message}}'),
    ('payment_failed', '{in_app,push,email,sms}', 'critical', 'payment_failure',
     'Payment failed', 'Your payment for {{booking_id}} failed. Please update your payment method.');

-- ---------------------------------------------------------------------------------------------
-- Recipients: users, their preferences, devices and webhooks
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.users (
    user_id          text        PRIMARY KEY,
    time_zone        text        NOT NULL DEFAULT 'UTC',
    email            text,
    phone            text,
    dnd_start        time        NOT NULL DEFAULT '22:00',
    dnd_end          time        NOT NULL DEFAULT '07:00',
    email_invalid_at timestamptz,
    phone_invalid_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_user_id_format CHECK (length(user_id) BETWEEN 1 AND 200),
    CONSTRAINT users_email_format
        CHECK (length(email) <= 254 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    CONSTRAINT users_phone_format CHECK (phone ~ '^\+[1-9][0-9]{6,14}$')
);
COMMENT ON TABLE realtime.users IS
    'Users who can receive notifications (user_id is the JWT sub claim), with their contact '
    'points and do-not-disturb window. A notification for a user who is not here is an error.';
COMMENT ON COLUMN realtime.users.time_zone IS
    'IANA time zone name (for example Asia/Tokyo); the do-not-disturb window is local time.';
COMMENT ON COLUMN realtime.users.dnd_start IS
    'Start of the daily do-not-disturb window (local time): push notifications wait until '
    'dnd_end unless they are critical. dnd_start = dnd_end means no window.';
COMMENT ON COLUMN realtime.users.email_invalid_at IS
    'Set when the mail server refused the address for good; cleared by setting a new email.';
COMMENT ON COLUMN realtime.users.phone_invalid_at IS
    'Set when the SMS provider refused the number for good; cleared by setting a new phone.';

CREATE FUNCTION realtime.users_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.time_zone IS DISTINCT FROM OLD.time_zone THEN
        BEGIN
            PERFORM now() AT TIME ZONE NEW.time_zone;
        EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
            RAISE EXCEPTION 'realtime.users: unknown time zone %',
                    quote_literal(left(NEW.time_zone, 80))
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'realtime', TABLE = 'users',
                      COLUMN = 'time_zone', HINT = 'Use an IANA name such as Europe/Paris.';
        END;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.email IS DISTINCT FROM OLD.email THEN
            NEW.email_invalid_at := NULL;
        END IF;
        IF NEW.phone IS DISTINCT FROM OLD.phone THEN
            NEW.phone_invalid_at := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_check BEFORE INSERT OR UPDATE ON realtime.users
    FOR EACH ROW EXECUTE FUNCTION realtime.users_check();

CREATE TABLE realtime.notification_preferences (
    user_id    text        NOT NULL REFERENCES realtime.users ON DELETE CASCADE,
    channel    text        NOT NULL REFERENCES realtime.notification_channels,
    type       text        REFERENCES realtime.notification_types ON DELETE CASCADE,
    enabled    boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notification_preferences_key UNIQUE NULLS NOT DISTINCT (user_id, channel, type)
);
COMMENT ON TABLE realtime.notification_preferences IS
    'Opt-ins and opt-outs per user and channel, for one type or (type NULL) for all types. A '
    'row for the type wins over the row for all types; without rows, every channel of the '
    'type is used. Critical notifications ignore opt-outs.';

CREATE TABLE realtime.push_tokens (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      text        NOT NULL REFERENCES realtime.users ON DELETE CASCADE,
    platform     text        NOT NULL,
    token        text        NOT NULL,
    p256dh       text,
    auth         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    CONSTRAINT push_tokens_platform CHECK (platform IN ('fcm', 'apns', 'webpush')),
    CONSTRAINT push_tokens_token_length CHECK (length(token) BETWEEN 1 AND 4096),
    CONSTRAINT push_tokens_webpush_keys CHECK (
        (platform = 'webpush') = (p256dh IS NOT NULL AND auth IS NOT NULL)
        AND length(p256dh) <= 200 AND length(auth) <= 100),
    CONSTRAINT push_tokens_webpush_endpoint
        CHECK (platform <> 'webpush' OR token ~ '^https?://'),
    CONSTRAINT push_tokens_unique UNIQUE (platform, token)
);
CREATE INDEX push_tokens_user_id_idx ON realtime.push_tokens (user_id);
COMMENT ON TABLE realtime.push_tokens IS
    'Devices that receive push notifications: an FCM registration token, an APNs device token, '
    'or a Web Push subscription (token = endpoint URL, with the browser''s p256dh and auth '
    'keys). A token the provider reports as unregistered is deleted.';

CREATE TABLE realtime.notification_webhooks (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text        NOT NULL REFERENCES realtime.users ON DELETE CASCADE,
    url        text        NOT NULL,
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notification_webhooks_url CHECK (url ~ '^https?://' AND length(url) <= 2048),
    CONSTRAINT notification_webhooks_secret CHECK (length(secret) BETWEEN 16 AND 256)
);
CREATE INDEX notification_webhooks_user_id_idx ON realtime.notification_webhooks (user_id);
COMMENT ON TABLE realtime.notification_webhooks IS
    'Webhook endpoints of a user (the webhook channel): each delivery is POSTed as JSON, '
    'signed with HMAC-SHA256 of the secret (Standard Webhooks headers).';

-- ---------------------------------------------------------------------------------------------
-- Notifications, the per-user counter and idempotency keys
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.notification_badges (
    user_id  text   PRIMARY KEY REFERENCES realtime.users ON DELETE CASCADE,
    last_seq bigint NOT NULL DEFAULT 0,
    unread   int    NOT NULL DEFAULT 0,
    CONSTRAINT notification_badges_unread CHECK (unread >= 0)
);
COMMENT ON TABLE realtime.notification_badges IS
    'Per user: the seq of the latest notification (gap-free, in commit order, like a room''s) '
    'and the unread count shown on the badge. Maintained by triggers.';

CREATE TABLE realtime.notifications (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         text        NOT NULL REFERENCES realtime.users ON DELETE CASCADE,
    seq             bigint,
    type            text        NOT NULL REFERENCES realtime.notification_types,
    channels        text[]      NOT NULL,
    priority        text        NOT NULL,
    payload         jsonb       NOT NULL DEFAULT '{}',
    title           text        NOT NULL,
    body            text        NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    read_at         timestamptz,
    dismissed_at    timestamptz,
    CONSTRAINT notifications_user_seq UNIQUE (user_id, seq),
    CONSTRAINT notifications_priority CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    CONSTRAINT notifications_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT notifications_payload_size CHECK (octet_length(payload::text) <= 16384),
    CONSTRAINT notifications_idempotency_key_length
        CHECK (length(idempotency_key) BETWEEN 1 AND 200)
);
CREATE INDEX notifications_user_created_idx
    ON realtime.notifications (user_id, created_at DESC, id DESC);
COMMENT ON TABLE realtime.notifications IS
    'Notifications. Insert user_id, type, payload (and optionally priority, idempotency_key), '
    'or call realtime.notify(). The trigger assigns seq, renders title and body, sets '
    'expires_at and routes the notification to its channels in the same transaction. After '
    'commit, connected clients of the user get notification:new.';
COMMENT ON COLUMN realtime.notifications.seq IS
    'Position in the user''s in-app feed: per user, gap-free and in commit order; clients '
    'resume with the last seq they saw. NULL for a notification that is not in-app (its type '
    'or the user''s preferences leave in_app out), until a failed push falls back to in-app.';
COMMENT ON COLUMN realtime.notifications.channels IS
    'The channels the notification was routed to when it was created (type, enabled '
    'channels, preferences, critical override), set by the trigger.';
COMMENT ON COLUMN realtime.notifications.priority IS
    'low, medium, high or critical; the type''s priority when omitted. Critical notifications '
    'ignore do-not-disturb and opt-outs.';
COMMENT ON COLUMN realtime.notifications.payload IS
    'A JSON object of at most 16384 bytes, passed to clients and providers.';
COMMENT ON COLUMN realtime.notifications.idempotency_key IS
    'Optional: a second notification for the same user with the same key within 24 hours is '
    'not inserted, and realtime.notify returns the first one''s id.';

CREATE TABLE realtime.notification_keys (
    user_id         text        NOT NULL,
    key             text        NOT NULL,
    notification_id bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX notification_keys_created_at_idx ON realtime.notification_keys (created_at);
COMMENT ON TABLE realtime.notification_keys IS
    'Idempotency keys of notifications (24 hours); pruned by realtime.prune_notifications().';

-- ---------------------------------------------------------------------------------------------
-- Deliveries and their history
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.notification_deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id bigint      NOT NULL REFERENCES realtime.notifications ON DELETE CASCADE,
    user_id         text        NOT NULL,
    channel         text        NOT NULL REFERENCES realtime.notification_channels,
    push_token_id   bigint,
    webhook_id      bigint,
    state           text        NOT NULL DEFAULT 'pending',
    attempts        int         NOT NULL DEFAULT 0,
    max_retries    int         NOT NULL,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    last_error      text,
    provider_id     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notification_deliveries_state
        CHECK (state IN ('pending', 'sent', 'delivered', 'read', 'failed', 'expired'))
);
CREATE INDEX notification_deliveries_due_idx ON realtime.notification_deliveries (next_attempt_at)
    WHERE state = 'pending' AND channel <> 'in_app';
CREATE INDEX notification_deliveries_pending_expiry_idx
    ON realtime.notification_deliveries (expires_at) WHERE state = 'pending';
CREATE INDEX notification_deliveries_in_app_pending_idx
    ON realtime.notification_deliveries (user_id) WHERE state = 'pending' AND channel = 'in_app';
CREATE INDEX notification_deliveries_notification_idx
    ON realtime.notification_deliveries (notification_id);
COMMENT ON TABLE realtime.notification_deliveries IS
    'One row per notification and channel (per device for push, per endpoint for webhooks). '
    'State: pending (queued or waiting for a retry), sent (the provider accepted it), delivered '
    '(in-app: it reached a connected client), read, failed (permanent error or attempts used '
    'up), expired (the type''s ttl passed first). Every change is kept in '
    'realtime.notification_delivery_events.';
COMMENT ON COLUMN realtime.notification_deliveries.next_attempt_at IS
    'When a pending delivery is due: now, after a retry delay (1 min, 5 min, 30 min, 2 h, 24 h) '
    'or at the end of the user''s do-not-disturb window.';

CREATE TABLE realtime.notification_delivery_events (
    delivery_id     bigint      NOT NULL,
    notification_id bigint      NOT NULL,
    channel         text        NOT NULL,
    event           text        NOT NULL,
    attempt         int         NOT NULL,
    error           text,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX notification_delivery_events_delivery_idx
    ON realtime.notification_delivery_events (delivery_id, at);
CREATE INDEX notification_delivery_events_at_idx ON realtime.notification_delivery_events (at);
COMMENT ON TABLE realtime.notification_delivery_events IS
    'The history of every delivery, for analysts: event is the new state (pending, sent, '
    'delivered, read, failed, expired), retry (a transient error; the delivery stays pending '
    'until next_attempt_at) or deferred (held for do-not-disturb). Kept 90 days.';

CREATE FUNCTION realtime.notification_delivery_history() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO realtime.notification_delivery_events
            (delivery_id, notification_id, channel, event, attempt)
        VALUES (NEW.id, NEW.notification_id, NEW.channel, NEW.state, NEW.attempts);
    ELSIF NEW.state <> OLD.state THEN
        INSERT INTO realtime.notification_delivery_events
            (delivery_id, notification_id, channel, event, attempt, error)
        VALUES (NEW.id, NEW.notification_id, NEW.channel, NEW.state, NEW.attempts,
                CASE WHEN NEW.state = 'failed' THEN NEW.last_error END);
    ELSIF NEW.attempts > OLD.attempts THEN
        INSERT INTO realtime.notification_delivery_events
            (delivery_id, notification_id, channel, event, attempt, error)
        VALUES (NEW.id, NEW.notification_id, NEW.channel, 'retry', NEW.attempts, NEW.last_error);
    ELSIF NEW.next_attempt_at > OLD.next_attempt_at THEN
        INSERT INTO realtime.notification_delivery_events
            (delivery_id, notification_id, channel, event, attempt)
        VALUES (NEW.id, NEW.notification_id, NEW.channel, 'deferred', NEW.attempts);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER notification_delivery_history
    AFTER INSERT OR UPDATE ON realtime.notification_deliveries
    FOR EACH ROW EXECUTE FUNCTION realtime.notification_delivery_history();

-- ---------------------------------------------------------------------------------------------
-- Rendering and routing
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.render_template(template text, payload jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_out  text := '';
    v_rest text := template;
    v_at   int;
    v_end  int;
    v_key  text;
    v_val  jsonb;
BEGIN
    LOOP
        v_at := strpos(v_rest, '{{');
        EXIT WHEN v_at = 0;
        v_end := strpos(substr(v_rest, v_at + 2), '}}');
        EXIT WHEN v_end = 0;
        v_key := btrim(substr(v_rest, v_at + 2, v_end - 1));
        v_val := payload -> v_key;
        v_out := v_out || left(v_rest, v_at - 1)
            || CASE WHEN v_val IS NULL OR jsonb_typeof(v_val) = 'null' THEN ''
                    WHEN jsonb_typeof(v_val) = 'string' THEN v_val #>> '{}'
                    ELSE v_val::text END;
        v_rest := substr(v_rest, v_at + v_end + 3);
    END LOOP;
    RETURN v_out || v_rest;
END
$$;
COMMENT ON FUNCTION realtime.render_template(text, jsonb) IS
    'Replaces each {{key}} in template by the payload''s top-level field key.';

-- Whether a user's preferences let channel carry notifications of type.
CREATE FUNCTION realtime.channel_wanted(p_user text, p_channel text, p_type text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT p.enabled FROM realtime.notification_preferences p
         WHERE p.user_id = p_user AND p.channel = p_channel
           AND (p.type = p_type OR p.type IS NULL)
         ORDER BY p.type NULLS LAST LIMIT 1),
        true)
$$;
COMMENT ON FUNCTION realtime.channel_wanted(text, text, text) IS
    'Whether the user''s preferences let the channel carry notifications of the type.';

CREATE FUNCTION realtime.notifications_before_insert() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type realtime.notification_types;
    v_size int;
    v_existing bigint;
BEGIN
    NEW.seq := NULL;
    IF NEW.user_id IS NULL THEN
        RAISE EXCEPTION 'realtime.notifications: user_id must not be NULL'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  COLUMN = 'user_id';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM realtime.users u WHERE u.user_id = NEW.user_id) THEN
        RAISE EXCEPTION 'realtime.notifications: unknown user %', quote_literal(left(NEW.user_id, 80))
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  COLUMN = 'user_id', HINT = 'Insert the user into realtime.users first.';
    END IF;
    SELECT * INTO v_type FROM realtime.notification_types t WHERE t.type = NEW.type;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'realtime.notifications: unknown notification type %',
                quote_literal(left(coalesce(NEW.type, 'NULL'), 80))
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  COLUMN = 'type', HINT = 'Types are rows of realtime.notification_types.';
    END IF;
    IF NEW.payload IS NULL OR jsonb_typeof(NEW.payload) <> 'object' THEN
        RAISE EXCEPTION 'realtime.notifications: payload must be a JSON object'
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  CONSTRAINT = 'notifications_payload_object';
    END IF;
    v_size := octet_length(NEW.payload::text);
    IF v_size > 16384 THEN
        RAISE EXCEPTION 'realtime.notifications: payload is % bytes as JSON text; the limit is 16384',
                v_size
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  CONSTRAINT = 'notifications_payload_size';
    END IF;
    NEW.priority := coalesce(NEW.priority, v_type.priority);
    IF NEW.priority NOT IN ('low', 'medium', 'high', 'critical') THEN
        RAISE EXCEPTION 'realtime.notifications: invalid priority %', quote_literal(left(NEW.priority, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  CONSTRAINT = 'notifications_priority',
                  HINT = 'One of low, medium, high, critical.';
    END IF;
    IF length(NEW.idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'realtime.notifications: idempotency_key must be 1-200 characters (or NULL)'
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'notifications',
                  CONSTRAINT = 'notifications_idempotency_key_length';
    END IF;
    IF NOT v_type.enabled THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(c.channel ORDER BY c.channel), '{}') INTO NEW.channels
    FROM unnest(v_type.channels) AS tc(channel)
    JOIN realtime.notification_channels c ON c.channel = tc.channel AND c.enabled
    WHERE NEW.priority = 'critical' OR realtime.channel_wanted(NEW.user_id, c.channel, NEW.type);

    -- The user's counter row is locked until commit: seqs are gap-free and in commit order,
    -- and every use of an idempotency key for this user is serialized behind it.
    INSERT INTO realtime.notification_badges (user_id) VALUES (NEW.user_id)
    ON CONFLICT (user_id) DO NOTHING;
    PERFORM 1 FROM realtime.notification_badges b WHERE b.user_id = NEW.user_id FOR UPDATE;
    IF NEW.idempotency_key IS NOT NULL THEN
        SELECT k.notification_id INTO v_existing FROM realtime.notification_keys k
        WHERE k.user_id = NEW.user_id AND k.key = NEW.idempotency_key
          AND k.created_at > now() - interval '24 hours';
        IF FOUND THEN
            RETURN NULL;
        END IF;
        INSERT INTO realtime.notification_keys AS k (user_id, key, notification_id)
        VALUES (NEW.user_id, NEW.idempotency_key, NEW.id)
        ON CONFLICT (user_id, key) DO UPDATE
            SET notification_id = excluded.notification_id, created_at = excluded.created_at;
    END IF;
    IF 'in_app' = ANY (NEW.channels) THEN
        UPDATE realtime.notification_badges b
        SET last_seq = b.last_seq + 1, unread = b.unread + 1
        WHERE b.user_id = NEW.user_id
        RETURNING b.last_seq INTO NEW.seq;
    END IF;

    NEW.title := realtime.render_template(v_type.title_template, NEW.payload);
    NEW.body := realtime.render_template(v_type.body_template, NEW.payload);
    NEW.created_at := coalesce(NEW.created_at, now());
    NEW.expires_at := NEW.created_at + v_type.ttl;
    NEW.read_at := NULL;
    NEW.dismissed_at := NULL;
    RETURN NEW;
END
$$;
CREATE TRIGGER notifications_before_insert BEFORE INSERT ON realtime.notifications
    FOR EACH ROW EXECUTE FUNCTION realtime.notifications_before_insert();

CREATE FUNCTION realtime.notifications_route() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_channels text[] := NEW.channels;
    v_outside  int := 0;
    v_count    int;
BEGIN
    IF 'in_app' = ANY (v_channels) THEN
        INSERT INTO realtime.notification_deliveries
            (notification_id, user_id, channel, max_retries, expires_at)
        SELECT NEW.id, NEW.user_id, 'in_app', c.max_retries, NEW.expires_at
        FROM realtime.notification_channels c WHERE c.channel = 'in_app';
    END IF;
    IF 'push' = ANY (v_channels) THEN
        INSERT INTO realtime.notification_deliveries
            (notification_id, user_id, channel, push_token_id, max_retries, expires_at)
        SELECT NEW.id, NEW.user_id, 'push', p.id, c.max_retries, NEW.expires_at
        FROM realtime.push_tokens p, realtime.notification_channels c
        WHERE p.user_id = NEW.user_id AND c.channel = 'push';
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_outside := v_outside + v_count;
    END IF;
    IF 'email' = ANY (v_channels) THEN
        INSERT INTO realtime.notification_deliveries
            (notification_id, user_id, channel, max_retries, expires_at)
        SELECT NEW.id, NEW.user_id, 'email', c.max_retries, NEW.expires_at
        FROM realtime.users u, realtime.notification_channels c
        WHERE u.user_id = NEW.user_id AND u.email IS NOT NULL AND u.email_invalid_at IS NULL
          AND c.channel = 'email';
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_outside := v_outside + v_count;
    END IF;
    IF 'sms' = ANY (v_channels) THEN
        INSERT INTO realtime.notification_deliveries
            (notification_id, user_id, channel, max_retries, expires_at)
        SELECT NEW.id, NEW.user_id, 'sms', c.max_retries, NEW.expires_at
        FROM realtime.users u, realtime.notification_channels c
        WHERE u.user_id = NEW.user_id AND u.phone IS NOT NULL AND u.phone_invalid_at IS NULL
          AND c.channel = 'sms';
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_outside := v_outside + v_count;
    END IF;
    IF 'webhook' = ANY (v_channels) THEN
        INSERT INTO realtime.notification_deliveries
            (notification_id, user_id, channel, webhook_id, max_retries, expires_at)
        SELECT NEW.id, NEW.user_id, 'webhook', w.id, c.max_retries, NEW.expires_at
        FROM realtime.notification_webhooks w, realtime.notification_channels c
        WHERE w.user_id = NEW.user_id AND c.channel = 'webhook';
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_outside := v_outside + v_count;
    END IF;
    IF v_outside > 0 THEN
        -- Identical notifications of one transaction are delivered once, at commit.
        PERFORM pg_notify('triptrip_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER notifications_route AFTER INSERT ON realtime.notifications
    FOR EACH ROW EXECUTE FUNCTION realtime.notifications_route();

-- Reading and dismissing keep the badge and the deliveries' states right.
CREATE FUNCTION realtime.notifications_after_update() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_was_unread boolean := OLD.seq IS NOT NULL AND OLD.read_at IS NULL AND OLD.dismissed_at IS NULL;
    v_is_unread  boolean := NEW.seq IS NOT NULL AND NEW.read_at IS NULL AND NEW.dismissed_at IS NULL;
BEGIN
    IF v_was_unread AND NOT v_is_unread THEN
        UPDATE realtime.notification_badges b SET unread = greatest(b.unread - 1, 0)
        WHERE b.user_id = NEW.user_id;
    ELSIF v_is_unread AND NOT v_was_unread THEN
        UPDATE realtime.notification_badges b SET unread = b.unread + 1
        WHERE b.user_id = NEW.user_id;
    END IF;
    IF NEW.read_at IS NOT NULL AND OLD.read_at IS NULL THEN
        UPDATE realtime.notification_deliveries d
        SET state = 'read', updated_at = now()
        WHERE d.notification_id = NEW.id AND d.state IN ('pending', 'sent', 'delivered')
          AND d.channel = 'in_app';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER notifications_after_update
    AFTER UPDATE OF read_at, dismissed_at, seq ON realtime.notifications
    FOR EACH ROW EXECUTE FUNCTION realtime.notifications_after_update();

CREATE FUNCTION realtime.notify(
    user_id         text,
    type            text,
    payload         jsonb DEFAULT '{}',
    idempotency_key text DEFAULT NULL,
    priority        text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO realtime.notifications AS n (user_id, type, payload, idempotency_key, priority)
    VALUES (notify.user_id, notify.type, notify.payload, notify.idempotency_key, notify.priority)
    RETURNING n.id INTO v_id;
    IF v_id IS NULL AND notify.idempotency_key IS NOT NULL THEN
        SELECT k.notification_id INTO v_id FROM realtime.notification_keys k
        WHERE k.user_id = notify.user_id AND k.key = notify.idempotency_key;
    END IF;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION realtime.notify(text, text, jsonb, text, text) IS
    'Creates a notification for user_id in the caller''s transaction and returns its id (the '
    'first one''s id when idempotency_key was used within 24 hours; NULL when the type is '
    'disabled).';

-- ---------------------------------------------------------------------------------------------
-- What dispatchers call
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.retry_delay(attempt int) RETURNS interval
LANGUAGE sql IMMUTABLE
AS $$
    SELECT (ARRAY[interval '1 minute', interval '5 minutes', interval '30 minutes',
                  interval '2 hours', interval '24 hours'])[least(greatest(attempt, 1), 5)]
$$;
COMMENT ON FUNCTION realtime.retry_delay(int) IS
    'How long a delivery waits after its attempt-th failed attempt: 1 min, 5 min, 30 min, 2 h, '
    '24 h (seed §5.3).';

-- When the do-not-disturb window of a user that contains p_at ends (NULL: p_at is outside it).
CREATE FUNCTION realtime.dnd_until(p_user text, p_at timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_user  realtime.users;
    v_local timestamp;
    v_time  time;
    v_end   timestamp;
BEGIN
    SELECT * INTO v_user FROM realtime.users u WHERE u.user_id = p_user;
    IF NOT FOUND OR v_user.dnd_start = v_user.dnd_end THEN
        RETURN NULL;
    END IF;
    v_local := p_at AT TIME ZONE v_user.time_zone;
    v_time := v_local::time;
    IF v_user.dnd_start < v_user.dnd_end THEN
        IF v_time < v_user.dnd_start OR v_time >= v_user.dnd_end THEN
            RETURN NULL;
        END IF;
        v_end := v_local::date + v_user.dnd_end;
    ELSIF v_time >= v_user.dnd_start THEN
        v_end := v_local::date + 1 + v_user.dnd_end;
    ELSIF v_time < v_user.dnd_end THEN
        v_end := v_local::date + v_user.dnd_end;
    ELSE
        RETURN NULL;
    END IF;
    RETURN v_end AT TIME ZONE v_user.time_zone;
END
$$;
COMMENT ON FUNCTION realtime.dnd_until(text, timestamptz) IS
    'The end of the user''s do-not-disturb window that contains the given time, or NULL when '
    'the time is outside it.';

-- Claims due deliveries of outside channels for the caller's transaction: expires those past
-- their ttl, defers non-critical push inside do-not-disturb, and returns the rest locked
-- (FOR UPDATE SKIP LOCKED). The caller sends them, records the outcomes with
-- realtime.record_delivery_attempts and commits; if it dies first, the locks go with its
-- connection and the deliveries are due again at once.
CREATE FUNCTION realtime.claim_deliveries(p_now timestamptz, p_limit int)
RETURNS TABLE (
    delivery_id     bigint,
    notification_id bigint,
    user_id         text,
    channel         text,
    type            text,
    priority        text,
    title           text,
    body            text,
    payload         jsonb,
    created_at      timestamptz,
    expires_at      timestamptz,
    attempts        int,
    platform        text,
    token           text,
    p256dh          text,
    auth            text,
    email           text,
    phone           text,
    url             text,
    secret          text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 10000 THEN
        RAISE EXCEPTION 'realtime.claim_deliveries: limit must be 1-10000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE realtime.notification_deliveries d
    SET state = 'expired', updated_at = p_now
    WHERE d.id IN (SELECT e.id FROM realtime.notification_deliveries e
                   WHERE e.state = 'pending' AND e.expires_at <= p_now
                   FOR UPDATE SKIP LOCKED);
    UPDATE realtime.notification_deliveries d
    SET next_attempt_at = w.until, updated_at = p_now
    FROM (SELECT e.id, realtime.dnd_until(e.user_id, p_now) AS until
          FROM realtime.notification_deliveries e
          JOIN realtime.notifications n ON n.id = e.notification_id
          WHERE e.state = 'pending' AND e.channel = 'push' AND e.next_attempt_at <= p_now
            AND n.priority <> 'critical'
          FOR UPDATE OF e SKIP LOCKED) w
    WHERE d.id = w.id AND w.until IS NOT NULL;
    RETURN QUERY
    WITH due AS (
        SELECT e.id FROM realtime.notification_deliveries e
        WHERE e.state = 'pending' AND e.channel <> 'in_app' AND e.next_attempt_at <= p_now
        ORDER BY e.next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT d.id, d.notification_id, d.user_id, d.channel, n.type, n.priority, n.title, n.body,
           n.payload, n.created_at, n.expires_at, d.attempts, p.platform, p.token, p.p256dh, p.auth,
           u.email, u.phone, w.url, w.secret
    FROM due
    JOIN realtime.notification_deliveries d ON d.id = due.id
    JOIN realtime.notifications n ON n.id = d.notification_id
    JOIN realtime.users u ON u.user_id = d.user_id
    LEFT JOIN realtime.push_tokens p ON p.id = d.push_token_id
    LEFT JOIN realtime.notification_webhooks w ON w.id = d.webhook_id;
END
$$;
COMMENT ON FUNCTION realtime.claim_deliveries(timestamptz, int) IS
    'For dispatchers: locks and returns up to p_limit due deliveries of outside channels, '
    'after expiring overdue ones and deferring push in do-not-disturb.';

-- Records what happened to claimed deliveries. p_outcomes[i] is sent, transient, permanent or
-- invalid_target; p_details[i] is the provider's message id (sent) or the error (otherwise).
CREATE FUNCTION realtime.record_delivery_attempts(
    p_now      timestamptz,
    p_ids      bigint[],
    p_outcomes text[],
    p_details  text[]
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r     record;
    v_seq bigint;
BEGIN
    IF cardinality(p_ids) IS DISTINCT FROM cardinality(p_outcomes)
       OR cardinality(p_ids) IS DISTINCT FROM cardinality(p_details) THEN
        RAISE EXCEPTION 'realtime.record_delivery_attempts: arrays of different lengths'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR r IN
        SELECT d.*, o.outcome, o.detail
        FROM unnest(p_ids, p_outcomes, p_details) AS o(id, outcome, detail)
        JOIN realtime.notification_deliveries d ON d.id = o.id
        WHERE d.state = 'pending' AND d.next_attempt_at <= p_now
    LOOP
        IF r.outcome NOT IN ('sent', 'transient', 'permanent', 'invalid_target') THEN
            RAISE EXCEPTION 'realtime.record_delivery_attempts: unknown outcome %',
                    quote_literal(left(r.outcome, 40))
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF r.outcome = 'sent' THEN
            UPDATE realtime.notification_deliveries d
            SET state = 'sent', attempts = r.attempts + 1, provider_id = left(r.detail, 500),
                last_error = NULL, updated_at = p_now
            WHERE d.id = r.id;
            IF r.push_token_id IS NOT NULL THEN
                UPDATE realtime.push_tokens p SET last_used_at = p_now WHERE p.id = r.push_token_id;
            END IF;
        ELSIF r.outcome = 'transient' AND r.attempts < r.max_retries THEN
            UPDATE realtime.notification_deliveries d
            SET attempts = r.attempts + 1, last_error = left(r.detail, 2000),
                next_attempt_at = p_now + realtime.retry_delay(r.attempts + 1), updated_at = p_now
            WHERE d.id = r.id;
        ELSE
            UPDATE realtime.notification_deliveries d
            SET state = 'failed', attempts = r.attempts + 1, last_error = left(r.detail, 2000),
                updated_at = p_now
            WHERE d.id = r.id;
            IF r.outcome = 'invalid_target' THEN
                IF r.channel = 'push' THEN
                    DELETE FROM realtime.push_tokens p WHERE p.id = r.push_token_id;
                ELSIF r.channel = 'email' THEN
                    UPDATE realtime.users u SET email_invalid_at = p_now
                    WHERE u.user_id = r.user_id;
                ELSIF r.channel = 'sms' THEN
                    UPDATE realtime.users u SET phone_invalid_at = p_now
                    WHERE u.user_id = r.user_id;
                ELSIF r.channel = 'webhook' THEN
                    DELETE FROM realtime.notification_webhooks w WHERE w.id = r.webhook_id;
                END IF;
            END IF;
            -- A push that failed for good falls back to in-app: the notification joins the
            -- user's feed (next seq) unless it is there already.
            IF r.channel = 'push' AND NOT EXISTS (
                SELECT 1 FROM realtime.notification_deliveries i
                WHERE i.notification_id = r.notification_id AND i.channel = 'in_app') THEN
                INSERT INTO realtime.notification_deliveries
                    (notification_id, user_id, channel, max_retries, expires_at)
                SELECT r.notification_id, r.user_id, 'in_app', c.max_retries, r.expires_at
                FROM realtime.notification_channels c WHERE c.channel = 'in_app';
                INSERT INTO realtime.notification_badges (user_id) VALUES (r.user_id)
                ON CONFLICT (user_id) DO NOTHING;
                v_seq := NULL;
                UPDATE realtime.notification_badges b SET last_seq = b.last_seq + 1
                WHERE b.user_id = r.user_id
                  AND EXISTS (SELECT 1 FROM realtime.notifications n
                              WHERE n.id = r.notification_id AND n.seq IS NULL)
                RETURNING b.last_seq INTO v_seq;
                IF v_seq IS NOT NULL THEN
                    UPDATE realtime.notifications n
                    SET seq = v_seq, channels = n.channels || '{in_app}'
                    WHERE n.id = r.notification_id;
                END IF;
            END IF;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION realtime.record_delivery_attempts(timestamptz, bigint[], text[], text[]) IS
    'For dispatchers: records the outcome of one attempt per claimed delivery (sent, transient, '
    'permanent, invalid_target), schedules retries, removes dead targets, falls back to in-app.';

-- In-app deliveries that reached a client, reported by the server in batches: for each user,
-- every notification up to a seq reached one of the user's connections.
CREATE FUNCTION realtime.mark_in_app_delivered(p_users text[], p_upto_seqs bigint[]) RETURNS int
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH done AS (
        UPDATE realtime.notification_deliveries d SET state = 'delivered', updated_at = now()
        FROM unnest(p_users, p_upto_seqs) AS r(user_id, upto), realtime.notifications n
        WHERE d.user_id = r.user_id AND d.channel = 'in_app' AND d.state = 'pending'
          AND n.id = d.notification_id AND n.seq <= r.upto
        RETURNING 1
    )
    SELECT count(*)::int FROM done
$$;
COMMENT ON FUNCTION realtime.mark_in_app_delivered(text[], bigint[]) IS
    'For the server: each user''s in-app deliveries up to the given notification seq reached '
    'a connected client.';

-- Marks notifications of one user read or dismissed; returns the ids that changed.
CREATE FUNCTION realtime.mark_notifications(p_user text, p_ids bigint[], p_action text)
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_action = 'read' THEN
        RETURN QUERY UPDATE realtime.notifications n SET read_at = now()
            WHERE n.user_id = p_user AND n.id = ANY (p_ids) AND n.read_at IS NULL
            RETURNING n.id;
    ELSIF p_action = 'dismiss' THEN
        RETURN QUERY UPDATE realtime.notifications n SET dismissed_at = now()
            WHERE n.user_id = p_user AND n.id = ANY (p_ids) AND n.dismissed_at IS NULL
            RETURNING n.id;
    ELSE
        RAISE EXCEPTION 'realtime.mark_notifications: action must be read or dismiss'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
COMMENT ON FUNCTION realtime.mark_notifications(text, bigint[], text) IS
    'Marks the user''s notifications read or dismissed (other users'' ids are ignored); '
    'returns the ids that changed.';

CREATE FUNCTION realtime.prune_notifications(older_than interval DEFAULT '90 days')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.prune_notifications: older_than must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM realtime.notification_keys k WHERE k.created_at < now() - interval '24 hours';
    DELETE FROM realtime.notification_delivery_events e WHERE e.at < now() - older_than;
    DELETE FROM realtime.notifications n WHERE n.created_at < now() - older_than;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION realtime.prune_notifications(interval) IS
    'Deletes notifications (with their deliveries) and delivery history older than older_than, '
    'and expired idempotency keys; returns the number of notifications deleted. Run hourly by '
    'the server.';

ALTER PUBLICATION triptrip_realtime
    ADD TABLE realtime.notifications, realtime.notification_badges;
