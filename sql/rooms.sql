-- For services: publishing into rooms with plain SQL.
-- Every committed row of realtime.messages reaches the clients joined to its room (at least
-- once, in seq order); a rolled-back row never does. Run with psql; every statement here is
-- exercised by tests/sql_examples.rs and tests/sql_rooms.rs, and re-running the file is safe.
--
-- Privileges a service's role needs (the role name is yours):
--   GRANT USAGE ON SCHEMA realtime TO my_service;
--   GRANT SELECT, INSERT ON realtime.messages TO my_service;   -- SELECT for RETURNING seq
--   GRANT SELECT ON realtime.idempotency_keys TO my_service;   -- only for realtime.publish
-- The trigger that assigns seq runs with its owner's rights: nothing else is needed.
--
-- Rules: room is 1-200 characters from A-Z a-z 0-9 _ . : - (for example trip:42), event is
-- 1-100 of the same characters, payload is jsonb of at most 64 KiB. Bad input is rejected
-- with a clear error and changes nothing.

-- 1. A plain INSERT. Leave seq out: a trigger assigns the room's next seq (a value you pass
--    is overwritten). created_at defaults to now().
INSERT INTO realtime.messages (room, event, payload)
VALUES ('trip:42', 'itinerary.updated', '{"day": 2, "stop": "Kyoto"}')
RETURNING room, seq;

-- 2. The same through realtime.publish(room, event, payload, idempotency_key, sender), which
--    returns the seq. `sender` names the user a message is published for (NULL = a service).
SELECT realtime.publish('trip:42', 'itinerary.updated', '{"day": 3, "stop": "Nara"}') AS seq;
SELECT realtime.publish('trip:42', 'chat.message', '{"text": "Train at 9:10"}',
                        sender => 'alice') AS seq;

-- 3. With an idempotency key: a retry with the same key in the same room within 24 hours
--    inserts nothing and returns the first message's seq (safe to retry after a timeout).
SELECT realtime.publish('trip:42', 'booking.confirmed', '{"booking": "B-1001"}',
                        'booking-B-1001-confirmed') AS first_seq \gset
SELECT realtime.publish('trip:42', 'booking.confirmed', '{"booking": "B-1001"}',
                        'booking-B-1001-confirmed') = :first_seq AS retry_returned_same_seq;
--    A plain INSERT with a key already used inserts 0 rows (RETURNING returns nothing).
INSERT INTO realtime.messages (room, event, payload, idempotency_key)
VALUES ('trip:42', 'booking.confirmed', '{"booking": "B-1001"}', 'booking-B-1001-confirmed')
RETURNING seq;
SELECT count(*) = 1 AS one_message_for_the_key
FROM realtime.messages
WHERE room = 'trip:42' AND idempotency_key = 'booking-B-1001-confirmed'
  AND created_at > now() - interval '24 hours';

-- 4. Several events, atomically: clients get both or neither, with consecutive seqs, after
--    COMMIT. From its first publish until COMMIT the transaction holds the room's counter
--    lock (other writers of the room wait), so publish late and commit soon; when publishing
--    into several rooms in one transaction, do it in a fixed order (e.g. sorted by room).
BEGIN;
INSERT INTO realtime.messages (room, event, payload)
VALUES ('trip:42', 'expense.added', '{"amount": 4200, "currency": "JPY"}');
SELECT realtime.publish('trip:42', 'budget.changed', '{"remaining": 95800}') AS seq;
COMMIT;

-- 5. A rolled-back publish is never delivered and leaves no gap: the counter rolls back too.
SELECT last_seq AS seq_before FROM realtime.rooms WHERE room = 'trip:42' \gset
BEGIN;
SELECT realtime.publish('trip:42', 'itinerary.updated', '{"draft": true}') AS seq;
ROLLBACK;
SELECT last_seq = :seq_before AS counter_unchanged FROM realtime.rooms WHERE room = 'trip:42';

-- 6. Bad input: a clear error (SQLSTATE 22023 from publish, 23514 or 23502 from an INSERT)
--    and nothing changes. Caught here only so that the script goes on.
DO $$
BEGIN
    PERFORM realtime.publish('trip 42', 'itinerary.updated');
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE NOTICE 'rejected as expected: %', SQLERRM;
END
$$;

-- 7. What a client resuming from seq 2 is replayed (the server runs this query; the primary
--    key (room, seq, created_at) serves it).
SELECT seq, event, payload, sender
FROM realtime.messages
WHERE room = 'trip:42' AND seq > 2
ORDER BY seq
LIMIT 5;
