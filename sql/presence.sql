-- For services, analysts and operators: presence (who is online) in SQL.
-- The server writes sessions and derives each user's state; services manage who may see whom
-- (room members, friends, blocks) and may set a user's mode. What other users see is
-- realtime.presence (invisible users are offline there); analysts read the history tables.
-- Run with psql; exercised by tests/sql_examples.rs; safe to re-run.

-- 1. Who may see whom: users sharing a room (realtime.room_members) and friends. One row makes
--    a friendship both ways. Changes apply at each viewer's next presence:subscribe.
INSERT INTO realtime.room_members (room, user_id) VALUES
    ('trip:7', 'hana'), ('trip:7', 'kenji'), ('trip:7', 'yui')
ON CONFLICT DO NOTHING;
INSERT INTO realtime.friends (user_id, friend_id) VALUES ('hana', 'sora')
ON CONFLICT DO NOTHING;
SELECT * FROM realtime.presence_visible_to('hana') AS visible(user_id) ORDER BY 1;

-- 2. Blocks hide both users from each other, whatever they share. An insert is streamed:
--    live presence updates between the two stop at once.
INSERT INTO realtime.blocks (user_id, blocked_id) VALUES ('yui', 'kenji')
ON CONFLICT DO NOTHING;
SELECT * FROM realtime.presence_visible_to('kenji') AS visible(user_id) ORDER BY 1;
DELETE FROM realtime.blocks WHERE user_id = 'yui' AND blocked_id = 'kenji';

-- 3. Who is online in a room, with last_seen (what GET /api/rooms/trip:7/presence answers for
--    hana). Members never seen are offline with no last_seen.
SELECT * FROM realtime.room_presence('trip:7', 'hana');

-- 4. A service sets a user's mode (auto, dnd or invisible) in its own transaction; the state
--    others see is recomputed and streamed after commit. Returns what others now see.
SELECT realtime.set_presence_mode('hana', 'dnd') AS hana_appears;
SELECT realtime.set_presence_mode('hana', 'auto') AS hana_appears;

-- 5. Operators: every user's real state (do not show it to other users: it reveals invisible
--    ones), the nodes and their sessions.
SELECT user_id, state, since, status, last_seen, mode, sessions
FROM realtime.presence_overview ORDER BY since DESC LIMIT 20;
SELECT node_id, started_at, heartbeat_at, now() - heartbeat_at AS silent_for,
       (SELECT count(*) FROM realtime.presence_sessions s WHERE s.node_id = n.node_id) AS sessions
FROM realtime.presence_nodes n ORDER BY started_at;

-- 6. Analysts: sessions per user and day, with their length, from the session history.
SELECT user_id, date_trunc('day', ended_at) AS day, count(*) AS sessions,
       avg(ended_at - started_at) AS average_length,
       count(*) FILTER (WHERE end_reason = 'node_expired') AS ended_by_dead_node
FROM realtime.presence_session_history
WHERE ended_at > now() - interval '30 days'
GROUP BY 1, 2 ORDER BY 2 DESC, 1 LIMIT 20;

-- 7. Analysts: time spent in each state, from the transitions (the last state runs until now).
SELECT user_id, from_state AS state,
       sum(next_at - at) AS time_in_state
FROM (SELECT user_id, to_state AS from_state, at,
             coalesce(lead(at) OVER (PARTITION BY user_id ORDER BY at), now()) AS next_at
      FROM realtime.presence_transitions
      WHERE at > now() - interval '7 days') t
GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 50;

-- 8. The monthly partitions, and retention: nodes create the next month's partitions
--    themselves; drop whole months older than a year.
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bounds
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent IN ('realtime.presence_session_history'::regclass,
                      'realtime.presence_transitions'::regclass)
ORDER BY 1;
SELECT realtime.ensure_presence_partitions(2) AS partitions_created;
SELECT realtime.drop_presence_partitions(interval '365 days') AS partitions_dropped;

-- 9. Tidy up what this example added, so that it leaves the database as it found it.
DELETE FROM realtime.friends WHERE user_id = 'hana' AND friend_id = 'sora';
DELETE FROM realtime.room_members WHERE room = 'trip:7';
DELETE FROM realtime.presence_settings WHERE user_id = 'hana';
