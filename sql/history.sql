-- For analysts and DBAs: room history, activity, partitions and retention.
-- Run with psql; exercised by tests/sql_examples.rs and tests/sql_rooms.rs; safe to re-run.
--
-- realtime.messages is append-only and partitioned by UTC day: realtime.messages_pYYYYMMDD
-- holds the rows created that day, realtime.messages_default catches rows of days without a
-- partition. Analysts need only SELECT on the views:
--   GRANT USAGE ON SCHEMA realtime TO analyst;
--   GRANT SELECT ON realtime.message_history, realtime.room_activity TO analyst;

-- 1. A room's latest messages, newest first. Within a room, order by seq (created_at is the
--    writer's transaction start and may interleave).
SELECT seq, event, payload, sender, created_at
FROM realtime.message_history
WHERE room = 'trip:42'
ORDER BY seq DESC
LIMIT 20;

-- 2. Events of the last 24 hours by name. A created_at filter reads only those days'
--    partitions.
SELECT event, count(*) AS messages
FROM realtime.message_history
WHERE created_at > now() - interval '24 hours'
GROUP BY event
ORDER BY messages DESC, event;

-- 3. The busiest rooms: latest seq, messages in the last 24 hours, latest message time.
SELECT room, last_seq, messages_last_24h, last_message_at
FROM realtime.room_activity
ORDER BY messages_last_24h DESC, room
LIMIT 20;

-- 4. The partitions, their bounds and sizes (approx_rows is -1 until first analyzed).
SELECT p.relid::regclass                              AS partition,
       pg_get_expr(c.relpartbound, c.oid)             AS bounds,
       c.reltuples::bigint                            AS approx_rows,
       pg_size_pretty(pg_total_relation_size(p.relid)) AS size
FROM pg_partition_tree('realtime.messages') p
JOIN pg_class c ON c.oid = p.relid
WHERE p.isleaf
ORDER BY p.relid::regclass::text;

-- 5. Rows in the default partition: days without a partition. Rows of yesterday onward move
--    into their partition when ensure_message_partitions creates it; older ones stay here
--    (drop_message_partitions never touches this partition) until a DBA deletes them.
SELECT count(*) AS rows_in_default, min(created_at) AS oldest, max(created_at) AS newest
FROM realtime.messages_default;

-- 6. Create the daily partitions from yesterday to 3 days ahead (returns how many it
--    created). Safe to run concurrently; run it at least daily, for example with pg_cron:
--      SELECT cron.schedule('triptrip-partitions', '5 0 * * *',
--          $$SELECT realtime.ensure_message_partitions(7)$$);
--    (The migration ran it once; realtime.messages_default catches rows of missing days.)
--    Attaching a day locks the default partition for a moment: bound the wait with
--    lock_timeout, so that a long transaction reading realtime.messages cannot queue every
--    writer of a day without a partition behind this call; retry later if it expires.
SET lock_timeout = '5s';
SELECT realtime.ensure_message_partitions() AS partitions_created;
RESET lock_timeout;

-- 7. Retention. Clients resume from the tables for the server's replay window (seed: 24 h);
--    analysts keep history for as long as the partitions stay. Dropping a day is instant and
--    writes no WAL per row, but takes an ACCESS EXCLUSIVE lock on realtime.messages for a
--    moment: bound the wait with lock_timeout and retry later if it expires. Keep table
--    retention at least as long as the replay window; a client resuming from a seq that was
--    dropped is told to reload its state.
SET lock_timeout = '5s';
SELECT realtime.drop_message_partitions(interval '30 days') AS partitions_dropped;
RESET lock_timeout;

-- 8. Idempotency keys expire after 24 hours; delete the expired ones periodically.
SELECT realtime.prune_idempotency_keys() AS keys_pruned;

-- 9. The replay query the server runs when a client resumes. Each populated partition answers
--    it from its primary key index (room, seq, created_at) and a Merge Append keeps seq order
--    across days; on empty or tiny partitions the planner may prefer a sequential scan.
EXPLAIN (COSTS OFF)
SELECT room, seq, event, payload, sender, created_at
FROM realtime.messages
WHERE room = 'trip:42' AND seq > 0
ORDER BY seq
LIMIT 100;
