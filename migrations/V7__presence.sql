-- Presence (seed §6.1): who is online, away, busy (do-not-disturb) or offline, shown only to
-- the users who share a room with them or are their friends, never to blocked users.
--
-- Each server node keeps its connections' sessions in memory and writes what changed in one
-- statement per flush interval (realtime.presence_apply), plus one heartbeat statement every few
-- seconds for all of its sessions (realtime.presence_beat). Every node also reaps: the sessions
-- of a node whose heartbeat expired are ended, so presence stays right when a node dies.
--
-- realtime.presence holds what OTHER users see (an invisible user is 'offline') and changes only
-- on a visible transition; it is in the publication, so the WAL carries transitions, never
-- heartbeats. Sessions and transitions are kept for analysts in monthly partitions.

-- ---------------------------------------------------------------------------------------------
-- Who may see whom: friends and blocks
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.friends (
    user_id    text        NOT NULL,
    friend_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id),
    CONSTRAINT friends_not_self CHECK (user_id <> friend_id),
    CONSTRAINT friends_ids_not_empty CHECK (user_id <> '' AND friend_id <> '')
);
CREATE INDEX friends_friend_id_idx ON realtime.friends (friend_id);
COMMENT ON TABLE realtime.friends IS
    'Friendships for presence. Symmetric: one row (a, b) makes a and b friends both ways (a '
    'second row (b, a) changes nothing). Friends see each other''s presence, like users who '
    'share a room in realtime.room_members. Changes take effect at the viewer''s next '
    'presence:subscribe.';

CREATE TABLE realtime.blocks (
    user_id    text        NOT NULL,
    blocked_id text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, blocked_id),
    CONSTRAINT blocks_not_self CHECK (user_id <> blocked_id),
    CONSTRAINT blocks_ids_not_empty CHECK (user_id <> '' AND blocked_id <> '')
);
CREATE INDEX blocks_blocked_id_idx ON realtime.blocks (blocked_id);
COMMENT ON TABLE realtime.blocks IS
    'user_id blocked blocked_id. Either direction hides each user''s presence and typing from '
    'the other, whatever rooms or friendships they share. Streamed: a committed insert stops '
    'live presence updates between the two at once.';

-- ---------------------------------------------------------------------------------------------
-- Nodes and their sessions
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.presence_nodes (
    node_id      uuid        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE realtime.presence_nodes IS
    'Running server nodes (a random id per process). Each updates heartbeat_at every few '
    'seconds (TRIPTRIP_PRESENCE_NODE_HEARTBEAT_MS); a node silent for longer than the expiry '
    '(TRIPTRIP_PRESENCE_NODE_EXPIRY_MS) is removed by any other node, which ends its sessions.';

CREATE TABLE realtime.presence_sessions (
    session_id     uuid        PRIMARY KEY,
    node_id        uuid        NOT NULL,
    user_id        text        NOT NULL,
    device         text,
    state          text        NOT NULL,
    started_at     timestamptz NOT NULL,
    last_active_at timestamptz NOT NULL,
    CONSTRAINT presence_sessions_state_valid CHECK (state IN ('online', 'away')),
    CONSTRAINT presence_sessions_user_id_not_empty CHECK (user_id <> ''),
    CONSTRAINT presence_sessions_device_length CHECK (length(device) <= 64)
);
CREATE INDEX presence_sessions_user_id_idx ON realtime.presence_sessions (user_id);
CREATE INDEX presence_sessions_node_id_idx ON realtime.presence_sessions (node_id);
COMMENT ON TABLE realtime.presence_sessions IS
    'Live presence sessions: one per connection, written by its node in batches. A session '
    'stays for the grace period after its connection closed (a reconnect within it is '
    'invisible to others). last_active_at is written only when the session changes state '
    '(online/away); the node''s heartbeat vouches for the rest.';
COMMENT ON COLUMN realtime.presence_sessions.state IS
    'online, or away after 5 minutes without a client frame (TRIPTRIP_PRESENCE_AWAY_MS).';
COMMENT ON COLUMN realtime.presence_sessions.device IS
    'What the client called itself in presence:subscribe (at most 64 characters), or NULL.';

CREATE TABLE realtime.presence_settings (
    user_id    text        PRIMARY KEY,
    mode       text        NOT NULL DEFAULT 'auto',
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT presence_settings_mode_valid CHECK (mode IN ('auto', 'dnd', 'invisible')),
    CONSTRAINT presence_settings_user_id_not_empty CHECK (user_id <> '')
);
COMMENT ON TABLE realtime.presence_settings IS
    'What the user chose: auto (online or away, from their sessions), dnd (do-not-disturb '
    'while connected) or invisible (appears offline to everyone). Kept across sessions. '
    'Change it with realtime.set_presence_mode(user, mode), which recomputes the state.';

-- ---------------------------------------------------------------------------------------------
-- Derived state: the real one, and what others see
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.presence_state (
    user_id text        PRIMARY KEY,
    state   text        NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT presence_state_state_valid
        CHECK (state IN ('online', 'away', 'dnd', 'invisible', 'offline'))
);
COMMENT ON TABLE realtime.presence_state IS
    'Each user''s real state, derived from their sessions and mode: offline without sessions, '
    'else invisible or dnd as set, else online if any session is online, else away. Private: '
    'never streamed. Its row is the lock that serializes changes of one user.';

CREATE TABLE realtime.presence (
    user_id    text        PRIMARY KEY,
    status     text        NOT NULL,
    last_seen  timestamptz NOT NULL,
    version    bigint      NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT presence_status_valid CHECK (status IN ('online', 'away', 'dnd', 'offline'))
);
COMMENT ON TABLE realtime.presence IS
    'What other users see of each user: invisible users are offline. Changes only on a visible '
    'transition, and streams to the user''s audience (presence:update). A user never seen has '
    'no row (offline).';
COMMENT ON COLUMN realtime.presence.last_seen IS
    'When the status last changed: for offline, when the user was last connected (or went '
    'invisible); for away, their last activity; for online and dnd, when they became so.';
COMMENT ON COLUMN realtime.presence.version IS
    'Counts the row''s changes (1 on insert): clients keep the highest.';

-- ---------------------------------------------------------------------------------------------
-- History for analysts, in monthly partitions
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.presence_session_history (
    session_id uuid        NOT NULL,
    node_id    uuid        NOT NULL,
    user_id    text        NOT NULL,
    device     text,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    end_reason text        NOT NULL,
    CONSTRAINT presence_session_history_reason_valid
        CHECK (end_reason IN ('disconnect', 'replaced', 'node_expired'))
) PARTITION BY RANGE (ended_at);
CREATE TABLE realtime.presence_session_history_default
    PARTITION OF realtime.presence_session_history DEFAULT;
CREATE INDEX presence_session_history_user_idx
    ON realtime.presence_session_history (user_id, ended_at);
COMMENT ON TABLE realtime.presence_session_history IS
    'Every ended presence session (append-only). end_reason: disconnect (the grace period '
    'passed), replaced (the user reconnected on the same node within the grace period), '
    'node_expired (its node stopped heartbeating; ended_at is the node''s last heartbeat). '
    'Monthly partitions realtime.presence_session_history_pYYYYMM.';

CREATE TABLE realtime.presence_transitions (
    user_id    text        NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    node_id    uuid
) PARTITION BY RANGE (at);
CREATE TABLE realtime.presence_transitions_default
    PARTITION OF realtime.presence_transitions DEFAULT;
CREATE INDEX presence_transitions_user_idx ON realtime.presence_transitions (user_id, at);
COMMENT ON TABLE realtime.presence_transitions IS
    'Every change of a user''s real state (online, away, dnd, invisible, offline), append-only. '
    'node_id is the node that applied it (NULL from SQL). Monthly partitions '
    'realtime.presence_transitions_pYYYYMM.';

CREATE FUNCTION realtime.ensure_presence_partitions(months_ahead int DEFAULT 1) RETURNS int
LANGUAGE plpgsql
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_month   date := date_trunc('month', now())::date;
    v_created int := 0;
    v_table   text;
    v_name    text;
    v_from    date;
BEGIN
    PERFORM pg_advisory_xact_lock(8390884987338188657);
    FOR i IN 0 .. greatest(months_ahead, 0) LOOP
        v_from := (v_month + make_interval(months => i))::date;
        FOREACH v_table IN ARRAY ARRAY['presence_session_history', 'presence_transitions'] LOOP
            v_name := v_table || '_p' || to_char(v_from, 'YYYYMM');
            CONTINUE WHEN to_regclass(format('realtime.%I', v_name)) IS NOT NULL;
            BEGIN
                EXECUTE format('CREATE TABLE realtime.%I PARTITION OF realtime.%I '
                               'FOR VALUES FROM (%L) TO (%L)', v_name, v_table,
                               v_from::timestamptz,
                               (v_from + interval '1 month')::timestamptz);
                v_created := v_created + 1;
            EXCEPTION WHEN check_violation THEN
                RAISE NOTICE 'realtime.ensure_presence_partitions: rows of % wait in the '
                             'default partition of realtime.%; not creating %',
                             to_char(v_from, 'YYYY-MM'), v_table, v_name;
            END;
        END LOOP;
    END LOOP;
    RETURN v_created;
END
$$;
COMMENT ON FUNCTION realtime.ensure_presence_partitions(int) IS
    'Creates the monthly partitions of realtime.presence_session_history and '
    'realtime.presence_transitions for this month and months_ahead more (UTC); returns how '
    'many it created. Nodes call it from their heartbeat when next month''s is missing.';

CREATE FUNCTION realtime.drop_presence_partitions(older_than interval) RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    v_dropped int := 0;
    r         record;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.drop_presence_partitions: older_than must be a non-negative '
                        'interval, not %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(8390884987338188657);
    FOR r IN
        SELECT c.relname,
               substring(pg_get_expr(c.relpartbound, c.oid)
                         FROM 'TO \(''([^'']+)''\)')::timestamptz AS upper_bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent IN ('realtime.presence_session_history'::regclass,
                              'realtime.presence_transitions'::regclass)
          AND c.relname ~ '_p[0-9]{6}$'
    LOOP
        IF r.upper_bound IS NOT NULL AND r.upper_bound <= now() - older_than THEN
            EXECUTE format('DROP TABLE realtime.%I', r.relname);
            v_dropped := v_dropped + 1;
        END IF;
    END LOOP;
    RETURN v_dropped;
END
$$;
COMMENT ON FUNCTION realtime.drop_presence_partitions(interval) IS
    'Retention: drops the monthly presence history partitions whose whole month ended before '
    'now() - older_than; returns how many.';

SELECT realtime.ensure_presence_partitions();

-- ---------------------------------------------------------------------------------------------
-- Recomputing a user's state
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.presence_ms(ms bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE
AS $$ SELECT to_timestamp(ms / 1000.0) $$;
COMMENT ON FUNCTION realtime.presence_ms(bigint) IS
    'Unix milliseconds (how nodes send times) as a timestamptz.';

CREATE FUNCTION realtime.presence_lock(p_users text[]) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO realtime.presence_state (user_id, state)
    SELECT u, 'offline' FROM unnest(p_users) u WHERE u IS NOT NULL ORDER BY u
    ON CONFLICT (user_id) DO NOTHING;
    PERFORM 1 FROM realtime.presence_state s
    WHERE s.user_id = ANY (p_users) ORDER BY s.user_id FOR UPDATE;
END
$$;
COMMENT ON FUNCTION realtime.presence_lock(text[]) IS
    'Locks the presence_state rows of these users (creating them offline), in user order so '
    'that nodes applying at once never deadlock. Every writer of presence takes it first.';

CREATE FUNCTION realtime.presence_recompute(p_user text, p_seen timestamptz, p_node uuid)
RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    v_count       int;
    v_online      boolean;
    v_active      timestamptz;
    v_mode        text;
    v_state       text;
    v_prev        text;
    v_status      text;
    v_prev_status text;
BEGIN
    SELECT count(*), coalesce(bool_or(s.state = 'online'), false), max(s.last_active_at)
    INTO v_count, v_online, v_active
    FROM realtime.presence_sessions s WHERE s.user_id = p_user;
    SELECT ps.mode INTO v_mode FROM realtime.presence_settings ps WHERE ps.user_id = p_user;
    v_state := CASE
        WHEN v_count = 0 THEN 'offline'
        WHEN v_mode = 'invisible' THEN 'invisible'
        WHEN v_mode = 'dnd' THEN 'dnd'
        WHEN v_online THEN 'online'
        ELSE 'away'
    END;
    SELECT st.state INTO v_prev FROM realtime.presence_state st WHERE st.user_id = p_user;
    IF v_prev IS NOT DISTINCT FROM v_state THEN
        RETURN 0;
    END IF;
    INSERT INTO realtime.presence_state AS st (user_id, state, since)
    VALUES (p_user, v_state, now())
    ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, since = EXCLUDED.since;
    INSERT INTO realtime.presence_transitions (user_id, from_state, to_state, node_id)
    VALUES (p_user, coalesce(v_prev, 'offline'), v_state, p_node);

    v_status := CASE v_state WHEN 'invisible' THEN 'offline' ELSE v_state END;
    SELECT p.status INTO v_prev_status FROM realtime.presence p WHERE p.user_id = p_user;
    IF v_prev_status IS NOT DISTINCT FROM v_status
       OR (v_prev_status IS NULL AND v_status = 'offline') THEN
        RETURN 2;
    END IF;
    INSERT INTO realtime.presence AS p (user_id, status, last_seen)
    VALUES (p_user, v_status,
            CASE v_status
                WHEN 'away' THEN coalesce(v_active, now())
                WHEN 'offline' THEN least(coalesce(p_seen, now()), now())
                ELSE now()
            END)
    ON CONFLICT (user_id) DO UPDATE
        SET status = EXCLUDED.status, last_seen = EXCLUDED.last_seen,
            version = p.version + 1, updated_at = now();
    RETURN 3;
END
$$;
COMMENT ON FUNCTION realtime.presence_recompute(text, timestamptz, uuid) IS
    'Derives p_user''s state from their sessions and mode; on a change records a transition, '
    'and on a visible change writes realtime.presence (p_seen: when their last session ended). '
    'Returns the rows written. The caller holds realtime.presence_lock for the user.';

-- ---------------------------------------------------------------------------------------------
-- What nodes call
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.presence_apply(p_node uuid, p_changes jsonb) RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    v_rows int := 0;
    v_n    int;
    r      record;
BEGIN
    IF jsonb_typeof(p_changes) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'realtime.presence_apply: changes must be a JSON array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM realtime.presence_lock(ARRAY(
        SELECT DISTINCT c->>'user' FROM jsonb_array_elements(p_changes) c));

    INSERT INTO realtime.presence_session_history
        (session_id, node_id, user_id, device, started_at, ended_at, end_reason)
    SELECT x.session, p_node, x."user", x.device, realtime.presence_ms(x.started),
           realtime.presence_ms(x.at), x.reason
    FROM jsonb_to_recordset(p_changes)
        AS x(op text, session uuid, "user" text, device text, started bigint, at bigint,
             reason text)
    WHERE x.op = 'end';
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;

    DELETE FROM realtime.presence_sessions s
    USING jsonb_to_recordset(p_changes) AS x(op text, session uuid)
    WHERE x.op = 'end' AND s.session_id = x.session;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;

    INSERT INTO realtime.presence_sessions AS s
        (session_id, node_id, user_id, device, state, started_at, last_active_at)
    SELECT x.session, p_node, x."user", x.device, x.state, realtime.presence_ms(x.started),
           realtime.presence_ms(x.active)
    FROM jsonb_to_recordset(p_changes)
        AS x(op text, session uuid, "user" text, device text, state text, started bigint,
             active bigint)
    WHERE x.op = 'upsert'
    ON CONFLICT (session_id) DO UPDATE
        SET node_id = EXCLUDED.node_id, device = EXCLUDED.device, state = EXCLUDED.state,
            last_active_at = EXCLUDED.last_active_at;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;

    INSERT INTO realtime.presence_settings AS ps (user_id, mode)
    SELECT x."user", x.mode
    FROM jsonb_to_recordset(p_changes) AS x(op text, "user" text, mode text)
    WHERE x.op = 'mode'
    ON CONFLICT (user_id) DO UPDATE SET mode = EXCLUDED.mode, updated_at = now()
        WHERE ps.mode IS DISTINCT FROM EXCLUDED.mode;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_rows := v_rows + v_n;

    FOR r IN
        SELECT x."user" AS user_id, max(x.at) FILTER (WHERE x.op = 'end') AS seen
        FROM jsonb_to_recordset(p_changes) AS x(op text, "user" text, at bigint)
        GROUP BY x."user" ORDER BY x."user"
    LOOP
        v_rows := v_rows + realtime.presence_recompute(r.user_id, realtime.presence_ms(r.seen),
                                                       p_node);
    END LOOP;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION realtime.presence_apply(uuid, jsonb) IS
    'What a node changed since its last flush, in one statement: a JSON array of '
    '{"op":"upsert","session","user","device","state","started","active"}, '
    '{"op":"end","session","user","device","started","at","reason"} and '
    '{"op":"mode","user","mode"} (times in Unix milliseconds; at most one op per session and '
    'one mode per user). Recomputes the users concerned; returns the rows written.';

CREATE FUNCTION realtime.presence_beat(p_node uuid, p_expiry_ms bigint,
                                       OUT rejoined boolean, OUT reaped int)
LANGUAGE plpgsql
AS $$
DECLARE
    v_dead   uuid[];
    v_beats  timestamptz[];
    v_cutoff timestamptz := now() - make_interval(secs => p_expiry_ms / 1000.0);
    v_users  text[];
    v_ended  timestamptz[];
    r        record;
BEGIN
    UPDATE realtime.presence_nodes SET heartbeat_at = now() WHERE node_id = p_node;
    rejoined := NOT FOUND;
    IF rejoined THEN
        INSERT INTO realtime.presence_nodes (node_id) VALUES (p_node)
        ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now();
    END IF;
    IF to_regclass(format('realtime.presence_transitions_p%s',
                          to_char(now() AT TIME ZONE 'UTC' + interval '1 month', 'YYYYMM')))
       IS NULL THEN
        PERFORM realtime.ensure_presence_partitions();
    END IF;

    -- Nodes that stopped heartbeating; a node reaping one makes the others skip it.
    SELECT coalesce(array_agg(n.node_id), '{}'), coalesce(array_agg(n.heartbeat_at), '{}')
    INTO v_dead, v_beats
    FROM (SELECT node_id, heartbeat_at FROM realtime.presence_nodes
          WHERE heartbeat_at < v_cutoff FOR UPDATE SKIP LOCKED) n;
    -- Their sessions, and sessions of nodes that have no row at all (long enough to rule out
    -- a node that is only registering).
    v_users := ARRAY(
        SELECT DISTINCT s.user_id FROM realtime.presence_sessions s
        WHERE s.node_id = ANY (v_dead)
           OR (s.started_at < v_cutoff AND NOT EXISTS (
                   SELECT 1 FROM realtime.presence_nodes n WHERE n.node_id = s.node_id))
        ORDER BY 1);
    reaped := 0;
    IF cardinality(v_users) = 0 AND cardinality(v_dead) = 0 THEN
        RETURN;
    END IF;
    PERFORM realtime.presence_lock(v_users);
    WITH gone AS (
        DELETE FROM realtime.presence_sessions s
        WHERE s.node_id = ANY (v_dead)
           OR (s.started_at < v_cutoff AND NOT EXISTS (
                   SELECT 1 FROM realtime.presence_nodes n WHERE n.node_id = s.node_id))
        RETURNING s.*
    ), ended AS (
        INSERT INTO realtime.presence_session_history
            (session_id, node_id, user_id, device, started_at, ended_at, end_reason)
        SELECT g.session_id, g.node_id, g.user_id, g.device, g.started_at,
               greatest(g.started_at, coalesce(b.beat, now())), 'node_expired'
        FROM gone g
        LEFT JOIN unnest(v_dead, v_beats) AS b(node_id, beat) ON b.node_id = g.node_id
        RETURNING user_id, ended_at
    )
    SELECT coalesce(array_agg(e.user_id), '{}'), coalesce(array_agg(e.ended_at), '{}')
    INTO v_users, v_ended
    FROM ended e;
    reaped := cardinality(v_users);
    DELETE FROM realtime.presence_nodes WHERE node_id = ANY (v_dead);
    FOR r IN
        SELECT e.u, max(e.at) AS seen FROM unnest(v_users, v_ended) AS e(u, at)
        GROUP BY e.u ORDER BY e.u
    LOOP
        PERFORM realtime.presence_recompute(r.u, r.seen, NULL);
    END LOOP;
END
$$;
COMMENT ON FUNCTION realtime.presence_beat(uuid, bigint) IS
    'A node''s heartbeat, every few seconds: refreshes its row (rejoined: the row was missing, '
    'because it is new or because others reaped it) and reaps nodes silent for longer than '
    'p_expiry_ms: their sessions end (reason node_expired) and their users are recomputed. '
    'Safe on every node at once (SKIP LOCKED). Returns the sessions it ended.';

-- ---------------------------------------------------------------------------------------------
-- For services and analysts
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.set_presence_mode(p_user text, p_mode text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_status text;
BEGIN
    IF p_user IS NULL OR p_user = '' THEN
        RAISE EXCEPTION 'realtime.set_presence_mode: user must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_mode IS NULL OR p_mode NOT IN ('auto', 'dnd', 'invisible') THEN
        RAISE EXCEPTION 'realtime.set_presence_mode: invalid mode %',
                coalesce(quote_literal(left(p_mode, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The mode is auto, dnd or invisible.';
    END IF;
    PERFORM realtime.presence_lock(ARRAY[p_user]);
    INSERT INTO realtime.presence_settings AS ps (user_id, mode) VALUES (p_user, p_mode)
    ON CONFLICT (user_id) DO UPDATE SET mode = EXCLUDED.mode, updated_at = now()
        WHERE ps.mode IS DISTINCT FROM EXCLUDED.mode;
    PERFORM realtime.presence_recompute(p_user, NULL, NULL);
    SELECT coalesce((SELECT p.status FROM realtime.presence p WHERE p.user_id = p_user),
                    'offline')
    INTO v_status;
    RETURN v_status;
END
$$;
COMMENT ON FUNCTION realtime.set_presence_mode(text, text) IS
    'Sets a user''s presence mode (auto, dnd or invisible) and recomputes their state in the '
    'caller''s transaction; returns the status others now see. Invalid input: SQLSTATE 22023.';

CREATE FUNCTION realtime.presence_blocked(a text, b text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM realtime.blocks k
                   WHERE (k.user_id = a AND k.blocked_id = b)
                      OR (k.user_id = b AND k.blocked_id = a))
$$;
COMMENT ON FUNCTION realtime.presence_blocked(text, text) IS
    'Whether a blocked b or b blocked a.';

CREATE FUNCTION realtime.presence_visible_to(p_viewer text) RETURNS SETOF text
LANGUAGE sql STABLE
AS $$
    SELECT c.u FROM (
        SELECT o.user_id AS u
        FROM realtime.room_members me
        JOIN realtime.room_members o ON o.room = me.room
        WHERE me.user_id = p_viewer
        UNION
        SELECT f.friend_id FROM realtime.friends f WHERE f.user_id = p_viewer
        UNION
        SELECT f.user_id FROM realtime.friends f WHERE f.friend_id = p_viewer
    ) c
    WHERE c.u <> p_viewer AND NOT realtime.presence_blocked(p_viewer, c.u)
$$;
COMMENT ON FUNCTION realtime.presence_visible_to(text) IS
    'The users whose presence p_viewer may see: those sharing a room with them '
    '(realtime.room_members) and their friends (realtime.friends, either direction), minus '
    'blocks in either direction.';

CREATE FUNCTION realtime.room_presence(p_room text, p_viewer text DEFAULT NULL)
RETURNS TABLE (user_id text, status text, last_seen timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT m.user_id,
           CASE WHEN hidden.yes THEN 'offline' ELSE coalesce(p.status, 'offline') END,
           CASE WHEN hidden.yes THEN NULL ELSE p.last_seen END
    FROM realtime.room_members m
    LEFT JOIN realtime.presence p ON p.user_id = m.user_id
    CROSS JOIN LATERAL (
        SELECT p_viewer IS NOT NULL AND m.user_id <> p_viewer
               AND realtime.presence_blocked(p_viewer, m.user_id) AS yes
    ) hidden
    WHERE m.room = p_room
    ORDER BY m.user_id
$$;
COMMENT ON FUNCTION realtime.room_presence(text, text) IS
    'The members of a room with the status others see and last_seen (NULL: never seen). With '
    'p_viewer, members with a block between them and the viewer appear offline without '
    'last_seen. What GET /api/rooms/{room}/presence answers.';

CREATE VIEW realtime.presence_overview AS
SELECT st.user_id,
       st.state,
       st.since,
       coalesce(p.status, 'offline') AS status,
       p.last_seen,
       coalesce(ps.mode, 'auto') AS mode,
       (SELECT count(*) FROM realtime.presence_sessions s WHERE s.user_id = st.user_id)
           AS sessions
FROM realtime.presence_state st
LEFT JOIN realtime.presence p ON p.user_id = st.user_id
LEFT JOIN realtime.presence_settings ps ON ps.user_id = st.user_id;
COMMENT ON VIEW realtime.presence_overview IS
    'Per user ever seen: real state and since when, what others see, the mode, and how many '
    'sessions are open. For operators; do not show state to other users (it reveals '
    'invisible users).';

ALTER PUBLICATION triptrip_realtime
    ADD TABLE realtime.presence, realtime.presence_settings, realtime.blocks;
