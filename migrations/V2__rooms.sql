-- Rooms: the log channel `realtime.messages`, its per-room sequence counter, idempotency keys,
-- membership, partition maintenance and the views analysts query.
--
-- Services write plain SQL: `INSERT INTO realtime.messages (room, event, payload) VALUES (...)`
-- or `SELECT realtime.publish(room, event, payload, idempotency_key)`. A trigger assigns the
-- gap-free per-room `seq` under a row lock on the room's counter, so within a room commit order
-- equals seq order. Committed rows stream to clients through the publication.
--
-- Days are UTC days: partition `realtime.messages_pYYYYMMDD` holds rows whose created_at falls
-- in [YYYY-MM-DD 00:00 UTC, next day 00:00 UTC).

-- ---------------------------------------------------------------------------------------------
-- The per-room counter
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.rooms (
    room       text        PRIMARY KEY,
    last_seq   bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rooms_room_format CHECK (room ~ '^[A-Za-z0-9_.:\-]{1,200}$'),
    CONSTRAINT rooms_last_seq_not_negative CHECK (last_seq >= 0)
);
COMMENT ON TABLE realtime.rooms IS
    'One row per room that ever received a message: its sequence counter. Created by the '
    'realtime.messages trigger on first use. Never delete a row or lower last_seq: clients drop '
    'events by (room, seq) as duplicates, so a reset counter would hide new messages.';
COMMENT ON COLUMN realtime.rooms.room IS
    'Room name: 1-200 characters from A-Z a-z 0-9 _ . : - (for example trip:42).';
COMMENT ON COLUMN realtime.rooms.last_seq IS
    'Seq of the room''s latest committed message (0: none yet). The row is locked by every '
    'writer until it commits, which makes seqs gap-free and in commit order.';
COMMENT ON COLUMN realtime.rooms.created_at IS 'When the room received its first message.';

-- ---------------------------------------------------------------------------------------------
-- Idempotency keys (24 h window)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.idempotency_keys (
    room       text        NOT NULL,
    key        text        NOT NULL,
    seq        bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON realtime.idempotency_keys (created_at);
COMMENT ON TABLE realtime.idempotency_keys IS
    'Idempotency keys of published messages: a second message with the same (room, key) within '
    '24 hours of the first is not inserted, and realtime.publish returns the first one''s seq. '
    'Written by the realtime.messages trigger; pruned by realtime.prune_idempotency_keys().';
COMMENT ON COLUMN realtime.idempotency_keys.key IS 'The idempotency_key the writer supplied.';
COMMENT ON COLUMN realtime.idempotency_keys.seq IS 'Seq of the message the key first published.';
COMMENT ON COLUMN realtime.idempotency_keys.created_at IS
    'When the key was (re)used to publish; the key expires 24 hours later.';

-- ---------------------------------------------------------------------------------------------
-- The log channel: realtime.messages, partitioned by day
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.messages (
    room            text        NOT NULL,
    seq             bigint      NOT NULL,
    event           text        NOT NULL,
    payload         jsonb       NOT NULL DEFAULT '{}',
    sender          text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_pkey PRIMARY KEY (room, seq, created_at),
    CONSTRAINT messages_room_format CHECK (room ~ '^[A-Za-z0-9_.:\-]{1,200}$'),
    CONSTRAINT messages_event_format CHECK (event ~ '^[A-Za-z0-9_.:\-]{1,100}$'),
    CONSTRAINT messages_payload_size CHECK (octet_length(payload::text) <= 65536),
    CONSTRAINT messages_idempotency_key_length
        CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT messages_seq_positive CHECK (seq > 0)
) PARTITION BY RANGE (created_at);
CREATE TABLE realtime.messages_default PARTITION OF realtime.messages DEFAULT;

COMMENT ON TABLE realtime.messages IS
    'Room messages (a log channel). Append-only; every committed row is delivered to the '
    'room''s authorized clients, who resume by (room, seq). Insert room, event, payload (and '
    'optionally sender, idempotency_key); seq is assigned by a trigger. Partitioned by UTC day '
    '(realtime.messages_pYYYYMMDD, plus realtime.messages_default); retention drops whole days.';
COMMENT ON COLUMN realtime.messages.room IS
    'Room name: 1-200 characters from A-Z a-z 0-9 _ . : - (no spaces, *, , or @).';
COMMENT ON COLUMN realtime.messages.seq IS
    'Per-room sequence number, gap-free and in commit order, assigned by the trigger '
    'realtime.assign_seq(); any value the writer supplies is overwritten.';
COMMENT ON COLUMN realtime.messages.event IS
    'Event name, 1-100 characters from A-Z a-z 0-9 _ . : - (for example itinerary.updated).';
COMMENT ON COLUMN realtime.messages.payload IS
    'Event data delivered to clients; at most 65536 bytes as JSON text.';
COMMENT ON COLUMN realtime.messages.sender IS
    'User id of the client that published the message; NULL for messages from services.';
COMMENT ON COLUMN realtime.messages.idempotency_key IS
    'Optional (1-200 characters): a second message with the same key in the same room within '
    '24 hours is not inserted (see realtime.idempotency_keys).';
COMMENT ON COLUMN realtime.messages.created_at IS
    'Insert time (the writer''s transaction start); the partition key. Within a room, order by '
    'seq, not by created_at.';
COMMENT ON TABLE realtime.messages_default IS
    'Default partition: holds rows whose UTC day has no partition yet, so inserts never fail. '
    'realtime.ensure_message_partitions() moves such rows into the day''s partition when it '
    'creates it; rows older than yesterday stay here until a DBA deletes them.';
COMMENT ON CONSTRAINT messages_room_format ON realtime.messages IS
    'room: 1-200 characters from A-Z a-z 0-9 _ . : -';
COMMENT ON CONSTRAINT messages_event_format ON realtime.messages IS
    'event: 1-100 characters from A-Z a-z 0-9 _ . : -';
COMMENT ON CONSTRAINT messages_payload_size ON realtime.messages IS
    'payload: at most 65536 bytes as JSON text';
COMMENT ON CONSTRAINT messages_idempotency_key_length ON realtime.messages IS
    'idempotency_key: NULL or 1-200 characters';

-- The sequence assignment. SECURITY DEFINER so that a service needs only INSERT on
-- realtime.messages, not write access to the counters and keys.
CREATE FUNCTION realtime.assign_seq() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seq   bigint;
    v_size  int;
    v_cache text;
    v_ctid  tid;
BEGIN
    -- Bad input: a clear error before the counter is touched.
    IF NEW.room IS NULL THEN
        RAISE EXCEPTION 'realtime.messages: room must not be NULL'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  COLUMN = 'room';
    END IF;
    IF NEW.room !~ '^[A-Za-z0-9_.:\-]{1,200}$' THEN
        RAISE EXCEPTION 'realtime.messages: invalid room %', quote_literal(left(NEW.room, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  CONSTRAINT = 'messages_room_format',
                  HINT = 'A room name is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF NEW.event IS NULL THEN
        RAISE EXCEPTION 'realtime.messages: event must not be NULL'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  COLUMN = 'event';
    END IF;
    IF NEW.event !~ '^[A-Za-z0-9_.:\-]{1,100}$' THEN
        RAISE EXCEPTION 'realtime.messages: invalid event %', quote_literal(left(NEW.event, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  CONSTRAINT = 'messages_event_format',
                  HINT = 'An event name is 1-100 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF NEW.payload IS NULL THEN
        RAISE EXCEPTION 'realtime.messages: payload must not be NULL'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  COLUMN = 'payload', HINT = 'Use ''{}'' for an event without data.';
    END IF;
    v_size := octet_length(NEW.payload::text);
    IF v_size > 65536 THEN
        RAISE EXCEPTION 'realtime.messages: payload is % bytes as JSON text; the limit is 65536',
                v_size
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  CONSTRAINT = 'messages_payload_size';
    END IF;
    IF length(NEW.idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'realtime.messages: idempotency_key must be 1-200 characters (or NULL)'
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  CONSTRAINT = 'messages_idempotency_key_length';
    END IF;
    IF NEW.created_at IS NULL THEN
        -- The row was already routed to a partition by its (NULL) created_at, so it cannot be
        -- set here: omit the column instead.
        RAISE EXCEPTION 'realtime.messages: created_at must not be NULL'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'realtime', TABLE = 'messages',
                  COLUMN = 'created_at', HINT = 'Omit created_at to use now().';
    END IF;

    -- Where the current version of the counter row of the room this transaction counted
    -- last is ("room (page,item)", local to the transaction, reverted with a rolled-back
    -- savepoint). It lets a bulk insert into one room reach the row by ctid: the versions one
    -- transaction leaves behind cannot be pruned before it ends, so finding the current one
    -- through the index would cost time proportional to the rows inserted so far. Only a
    -- shortcut: the row is still locked and updated by the statements below, and a miss or a
    -- stale ctid takes the index path.
    v_cache := current_setting('triptrip.seq_cache', true);
    IF v_cache IS NOT NULL AND starts_with(v_cache, NEW.room || ' ') THEN
        v_ctid := substr(v_cache, length(NEW.room) + 2)::tid;
    END IF;

    IF NEW.idempotency_key IS NOT NULL THEN
        -- Take the room's lock first, then look for the key: every use of a key in this room
        -- is serialized behind the lock, so concurrent duplicates insert exactly one row.
        IF v_ctid IS NOT NULL THEN
            PERFORM 1 FROM realtime.rooms r WHERE r.ctid = v_ctid AND r.room = NEW.room
            FOR UPDATE;
            IF NOT FOUND THEN
                v_ctid := NULL;
            END IF;
        END IF;
        IF v_ctid IS NULL THEN
            PERFORM 1 FROM realtime.rooms r WHERE r.room = NEW.room FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO realtime.rooms (room) VALUES (NEW.room) ON CONFLICT DO NOTHING;
                PERFORM 1 FROM realtime.rooms r WHERE r.room = NEW.room FOR UPDATE;
            END IF;
        END IF;
        IF EXISTS (SELECT 1
                   FROM realtime.idempotency_keys k
                   WHERE k.room = NEW.room
                     AND k.key = NEW.idempotency_key
                     AND k.created_at > now() - interval '24 hours') THEN
            RETURN NULL; -- a duplicate: the insert does nothing
        END IF;
    END IF;

    -- Lock and increment the counter; the lock is held until this transaction ends, so the
    -- next writer of the room reads the committed value (or the old one after a rollback).
    IF v_ctid IS NOT NULL THEN
        UPDATE realtime.rooms r SET last_seq = r.last_seq + 1
        WHERE r.ctid = v_ctid AND r.room = NEW.room
        RETURNING r.last_seq, r.ctid INTO v_seq, v_ctid;
    END IF;
    IF v_seq IS NULL THEN
        UPDATE realtime.rooms r SET last_seq = r.last_seq + 1
        WHERE r.room = NEW.room
        RETURNING r.last_seq, r.ctid INTO v_seq, v_ctid;
        IF NOT FOUND THEN
            INSERT INTO realtime.rooms (room) VALUES (NEW.room) ON CONFLICT DO NOTHING;
            UPDATE realtime.rooms r SET last_seq = r.last_seq + 1
            WHERE r.room = NEW.room
            RETURNING r.last_seq, r.ctid INTO v_seq, v_ctid;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'realtime.messages: the counter row of room % vanished',
                        quote_literal(NEW.room)
                    USING ERRCODE = 'serialization_failure', HINT = 'Retry the transaction.';
            END IF;
        END IF;
    END IF;
    PERFORM set_config('triptrip.seq_cache', NEW.room || ' ' || v_ctid::text, true);

    IF NEW.idempotency_key IS NOT NULL THEN
        -- An upsert: an expired key may be used again.
        INSERT INTO realtime.idempotency_keys AS k (room, key, seq)
        VALUES (NEW.room, NEW.idempotency_key, v_seq)
        ON CONFLICT (room, key) DO UPDATE SET seq = EXCLUDED.seq, created_at = EXCLUDED.created_at;
    END IF;

    NEW.seq := v_seq;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION realtime.assign_seq() IS
    'BEFORE INSERT trigger of realtime.messages: validates the row, locks the room''s counter '
    'in realtime.rooms (creating it on first use), skips the insert for an idempotency key used '
    'in the room within 24 hours, else sets seq = last_seq + 1 and records the key. Writers '
    'of one room queue on the lock until the previous writer commits: publish late in a '
    'transaction, and publish to several rooms in a consistent order to avoid deadlocks. Use '
    'READ COMMITTED (the default): under REPEATABLE READ a busy room raises serialization '
    'failures.';

CREATE TRIGGER messages_assign_seq
    BEFORE INSERT ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.assign_seq();

-- A message's identity never changes: an UPDATE that moved it to another room, seq or day
-- would break the sequence clients resume from (and a change of day would re-run the insert
-- trigger in the new partition).
CREATE FUNCTION realtime.messages_keep_identity() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.room IS DISTINCT FROM OLD.room
       OR NEW.seq IS DISTINCT FROM OLD.seq
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'realtime.messages: room, seq and created_at of a message cannot change'
            USING ERRCODE = 'integrity_constraint_violation', SCHEMA = 'realtime',
                  TABLE = 'messages',
                  HINT = 'Publish a new message instead of moving an old one.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION realtime.messages_keep_identity() IS
    'BEFORE UPDATE trigger of realtime.messages: rejects changes of room, seq or created_at.';
CREATE TRIGGER messages_keep_identity
    BEFORE UPDATE OF room, seq, created_at ON realtime.messages
    FOR EACH ROW EXECUTE FUNCTION realtime.messages_keep_identity();

-- ---------------------------------------------------------------------------------------------
-- publish(): the function form of the insert
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.publish(
    room text,
    event text,
    payload jsonb DEFAULT '{}',
    idempotency_key text DEFAULT NULL,
    sender text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_seq bigint;
BEGIN
    IF publish.room IS NULL OR publish.room !~ '^[A-Za-z0-9_.:\-]{1,200}$' THEN
        RAISE EXCEPTION 'realtime.publish: invalid room %',
                coalesce(quote_literal(left(publish.room, 80)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A room name is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF publish.event IS NULL OR publish.event !~ '^[A-Za-z0-9_.:\-]{1,100}$' THEN
        RAISE EXCEPTION 'realtime.publish: invalid event %',
                coalesce(quote_literal(left(publish.event, 80)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'An event name is 1-100 characters from A-Z a-z 0-9 _ . : -';
    END IF;

    INSERT INTO realtime.messages AS m (room, event, payload, idempotency_key, sender)
    VALUES (publish.room, publish.event, coalesce(publish.payload, '{}'::jsonb),
            publish.idempotency_key, publish.sender)
    RETURNING m.seq INTO v_seq;

    IF v_seq IS NULL THEN
        -- The trigger found the key (under the room's lock): return the first message's seq.
        SELECT k.seq INTO v_seq
        FROM realtime.idempotency_keys k
        WHERE k.room = publish.room AND k.key = publish.idempotency_key;
    END IF;
    RETURN v_seq;
END
$$;
COMMENT ON FUNCTION realtime.publish(text, text, jsonb, text, text) IS
    'Publishes an event into a room in the caller''s transaction (delivered after commit) and '
    'returns its seq. With an idempotency_key already used in the room within 24 hours nothing '
    'is inserted and the first message''s seq is returned. A NULL payload means {}. Invalid '
    'room or event: SQLSTATE 22023. Needs INSERT and SELECT on realtime.messages and SELECT on '
    'realtime.idempotency_keys.';

-- ---------------------------------------------------------------------------------------------
-- Membership and the overridable authorization functions
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.room_members (
    room       text        NOT NULL,
    user_id    text        NOT NULL,
    role       text        NOT NULL DEFAULT 'writer',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, user_id),
    CONSTRAINT room_members_role_valid CHECK (role IN ('reader', 'writer', 'owner')),
    CONSTRAINT room_members_room_format CHECK (room ~ '^[A-Za-z0-9_.:\-]{1,200}$'),
    CONSTRAINT room_members_user_id_not_empty CHECK (user_id <> '')
);
CREATE INDEX room_members_user_id_idx ON realtime.room_members (user_id);
COMMENT ON TABLE realtime.room_members IS
    'Who may join and publish to which room (in addition to the rooms claim of a JWT). Streamed '
    'to the server: deleting a row removes that user''s connected clients from the room live; '
    'changing role takes effect on their next publish.';
COMMENT ON COLUMN realtime.room_members.user_id IS 'The user id (the JWT sub claim).';
COMMENT ON COLUMN realtime.room_members.role IS
    'reader: join and receive; writer: also publish; owner: a writer that owns the room.';

CREATE FUNCTION realtime.can_join(user_id text, room text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (
        SELECT 1 FROM realtime.room_members m
        WHERE m.room = can_join.room AND m.user_id = can_join.user_id
    )
$$;
COMMENT ON FUNCTION realtime.can_join(text, text) IS
    'Whether user_id may join room (called by the server at join time, besides the JWT rooms '
    'claim). Default: a realtime.room_members row exists. Overridable: a deployment may '
    'CREATE OR REPLACE it with its own rule, keeping this signature and return type.';

CREATE FUNCTION realtime.can_publish(user_id text, room text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (
        SELECT 1 FROM realtime.room_members m
        WHERE m.room = can_publish.room AND m.user_id = can_publish.user_id
          AND m.role IN ('writer', 'owner')
    )
$$;
COMMENT ON FUNCTION realtime.can_publish(text, text) IS
    'Whether user_id may publish into room (called by the server at publish time, besides the '
    'JWT rooms claim). Default: a realtime.room_members row with role writer or owner. '
    'Overridable: a deployment may CREATE OR REPLACE it, keeping this signature and return type.';

-- ---------------------------------------------------------------------------------------------
-- Partition maintenance
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.ensure_message_partitions(days_ahead int DEFAULT 3) RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    v_today    date := (now() AT TIME ZONE 'UTC')::date;
    v_day      date;
    v_name     text;
    v_from     text;
    v_to       text;
    v_moved    bigint;
    v_attached boolean;
    v_created  int := 0;
BEGIN
    IF days_ahead IS NULL OR days_ahead NOT BETWEEN 0 AND 366 THEN
        RAISE EXCEPTION 'realtime.ensure_message_partitions: days_ahead must be 0-366, not %',
                coalesce(days_ahead::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One maintainer at a time (ensure and drop share the key); held until commit.
    PERFORM pg_advisory_xact_lock(8390884987338188656);

    FOR i IN -1 .. days_ahead LOOP
        v_day  := v_today + i;
        v_name := 'messages_p' || to_char(v_day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(format('realtime.%I', v_name)) IS NOT NULL;
        v_from := to_char(v_day, 'YYYY-MM-DD') || ' 00:00:00+00';
        v_to   := to_char(v_day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';

        v_moved := 0;
        v_attached := false;
        IF NOT EXISTS (SELECT 1 FROM realtime.messages_default d
                       WHERE d.created_at >= v_from::timestamptz
                         AND d.created_at < v_to::timestamptz) THEN
            -- The usual case: build the partition as a plain table and ATTACH it, which locks
            -- realtime.messages only in SHARE UPDATE EXCLUSIVE mode, so writers go on. The
            -- default partition is locked for the moment ATTACH takes to check that it holds
            -- no row of the new day (queries reading it wait that long).
            BEGIN
                EXECUTE format('CREATE TABLE realtime.%I (LIKE realtime.messages '
                               'INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                               v_name);
                -- Lets ATTACH skip scanning the new table; dropped after.
                EXECUTE format('ALTER TABLE realtime.%I ADD CONSTRAINT %I '
                               'CHECK (created_at >= %L AND created_at < %L)',
                               v_name, v_name || '_bound', v_from, v_to);
                EXECUTE format('ALTER TABLE realtime.messages ATTACH PARTITION realtime.%I '
                               'FOR VALUES FROM (%L) TO (%L)', v_name, v_from, v_to);
                v_attached := true;
            EXCEPTION WHEN check_violation THEN
                -- A row of this day reached the default partition meanwhile: move it below.
                v_attached := false;
            END;
        END IF;
        IF NOT v_attached THEN
            -- Rows of this day wait in the default partition (maintenance lapsed). Move them
            -- while the default partition is detached, so that the move is no change of
            -- realtime.messages: nothing is streamed and seqs stay. realtime.messages is
            -- locked (ACCESS EXCLUSIVE) meanwhile; take that lock first, as writers do.
            LOCK TABLE realtime.messages IN ACCESS EXCLUSIVE MODE;
            ALTER TABLE realtime.messages DETACH PARTITION realtime.messages_default;
            EXECUTE format('CREATE TABLE realtime.%I (LIKE realtime.messages '
                           'INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                           v_name);
            EXECUTE format('ALTER TABLE realtime.%I ADD CONSTRAINT %I '
                           'CHECK (created_at >= %L AND created_at < %L)',
                           v_name, v_name || '_bound', v_from, v_to);
            EXECUTE format('WITH moved AS (DELETE FROM realtime.messages_default '
                           'WHERE created_at >= $1 AND created_at < $2 RETURNING *) '
                           'INSERT INTO realtime.%I SELECT * FROM moved', v_name)
                USING v_from::timestamptz, v_to::timestamptz;
            GET DIAGNOSTICS v_moved = ROW_COUNT;
            EXECUTE format('ALTER TABLE realtime.messages ATTACH PARTITION realtime.%I '
                           'FOR VALUES FROM (%L) TO (%L)', v_name, v_from, v_to);
            ALTER TABLE realtime.messages ATTACH PARTITION realtime.messages_default DEFAULT;
        END IF;
        EXECUTE format('ALTER TABLE realtime.%I DROP CONSTRAINT %I', v_name, v_name || '_bound');
        EXECUTE format('COMMENT ON TABLE realtime.%I IS %L', v_name,
                       format('Messages created on %s (UTC day); see realtime.messages.', v_day));
        IF v_moved > 0 THEN
            RAISE NOTICE 'realtime.ensure_message_partitions: moved % rows of % from '
                         'realtime.messages_default into realtime.%', v_moved, v_day, v_name;
        END IF;
        v_created := v_created + 1;
    END LOOP;
    RETURN v_created;
END
$$;
COMMENT ON FUNCTION realtime.ensure_message_partitions(int) IS
    'Creates the missing daily partitions realtime.messages_pYYYYMMDD from yesterday to '
    'days_ahead days after today (UTC) and returns how many it created. Locks '
    'realtime.messages only in SHARE UPDATE EXCLUSIVE mode (writers go on) and the default '
    'partition for a moment, unless rows of such a day already sit in '
    'realtime.messages_default: those move into the new partition, unchanged and without '
    'streaming anything, under a short ACCESS EXCLUSIVE lock on realtime.messages. Safe to call '
    'concurrently (advisory lock). Run it at least daily (server, cron or pg_cron), with a '
    'lock_timeout so that a long transaction holding the table cannot queue writers behind it.';

CREATE FUNCTION realtime.drop_message_partitions(older_than interval) RETURNS int
LANGUAGE plpgsql
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
AS $$
DECLARE
    v_cutoff  timestamptz;
    v_dropped int := 0;
    r         record;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.drop_message_partitions: older_than must be a non-negative '
                        'interval, not %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_cutoff := now() - older_than;
    PERFORM pg_advisory_xact_lock(8390884987338188656);
    FOR r IN
        SELECT c.relname,
               substring(pg_get_expr(c.relpartbound, c.oid)
                         FROM 'TO \(''([^'']+)''\)')::timestamptz AS upper_bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'realtime.messages'::regclass
          AND c.relname ~ '^messages_p[0-9]{8}$'
        ORDER BY c.relname
    LOOP
        IF r.upper_bound IS NOT NULL AND r.upper_bound <= v_cutoff THEN
            EXECUTE format('DROP TABLE realtime.%I', r.relname);
            v_dropped := v_dropped + 1;
        END IF;
    END LOOP;
    RETURN v_dropped;
END
$$;
COMMENT ON FUNCTION realtime.drop_message_partitions(interval) IS
    'Retention: drops the daily partitions of realtime.messages whose whole range ends at or '
    'before now() - older_than and returns how many it dropped; never touches '
    'realtime.messages_default. Dropping takes an ACCESS EXCLUSIVE lock on realtime.messages '
    'for a moment (set lock_timeout and retry if long transactions hold it). Clients resuming '
    'from a dropped seq are told to reload.';

CREATE FUNCTION realtime.prune_idempotency_keys() RETURNS bigint
LANGUAGE sql
AS $$
    WITH pruned AS (
        DELETE FROM realtime.idempotency_keys
        WHERE created_at <= now() - interval '24 hours'
        RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;
COMMENT ON FUNCTION realtime.prune_idempotency_keys() IS
    'Deletes idempotency keys older than 24 hours (expired: they no longer deduplicate) and '
    'returns how many; run it periodically.';

SELECT realtime.ensure_message_partitions();

-- ---------------------------------------------------------------------------------------------
-- Views for analysts
-- ---------------------------------------------------------------------------------------------
CREATE VIEW realtime.message_history AS
SELECT m.room, m.seq, m.event, m.payload, m.sender, m.created_at
FROM realtime.messages m;
COMMENT ON VIEW realtime.message_history IS
    'Every retained room message; order a room''s history by seq. Filter on created_at to '
    'read only the partitions of those days.';

CREATE VIEW realtime.room_activity AS
SELECT r.room,
       r.last_seq,
       (SELECT count(*)
        FROM realtime.messages m
        WHERE m.room = r.room AND m.created_at > now() - interval '24 hours') AS messages_last_24h,
       (SELECT m.created_at
        FROM realtime.messages m
        WHERE m.room = r.room
        ORDER BY m.seq DESC
        LIMIT 1) AS last_message_at
FROM realtime.rooms r;
COMMENT ON VIEW realtime.room_activity IS
    'Per room: the latest seq, how many messages in the last 24 hours, and when the latest '
    'retained message was created (NULL once retention dropped it).';
COMMENT ON COLUMN realtime.room_activity.messages_last_24h IS
    'Messages created in the last 24 hours.';
COMMENT ON COLUMN realtime.room_activity.last_message_at IS
    'created_at of the room''s highest-seq retained message.';

-- ---------------------------------------------------------------------------------------------
-- Streaming: changes of any partition arrive as realtime.messages
-- ---------------------------------------------------------------------------------------------
ALTER PUBLICATION triptrip_realtime ADD TABLE realtime.messages, realtime.room_members;
ALTER PUBLICATION triptrip_realtime SET (publish_via_partition_root = true);
