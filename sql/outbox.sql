-- The transactional outbox for services (seed §5.3): events written in the business
-- transaction reach the subscribed rooms and webhooks after commit, in order per topic, at
-- least once. Run as a whole by tests/sql_examples.rs.

-- 1. Subscribe: every topic starting with example-orders: goes to a room, one topic to a
-- signed webhook. A subscription gets the events committed after it was created.
INSERT INTO realtime.outbox_subscriptions (topic_pattern, room)
VALUES ('example-orders:*', 'ops:example-orders');
INSERT INTO realtime.outbox_subscriptions (topic_pattern, webhook_url, webhook_secret)
VALUES ('example-orders:1042', 'http://127.0.0.1:9/hooks/orders',
        'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');

-- 2. Write events in your own transaction; they are relayed only if it commits. One topic per
-- aggregate keeps each aggregate's events in order.
BEGIN;
-- ... UPDATE orders SET status = 'paid' WHERE id = 1042 ...
INSERT INTO realtime.outbox (topic, event, payload)
VALUES ('example-orders:1042', 'order.paid', '{"order_id": 1042, "amount": 12000}');
SELECT realtime.outbox_publish('example-orders:1042', 'order.shipped', '{"order_id": 1042}') AS seq;
COMMIT;

-- 3. Operators: what is waiting per subscription and topic, and the last failure.
SELECT subscription_id, topic_pattern, target, topic, pending, failures, next_attempt_at, last_error
FROM realtime.outbox_backlog ORDER BY subscription_id, topic;

-- A topic's events, as relayed (webhook-id is outbox:<topic>:<seq>).
SELECT topic, seq, event, payload, created_at FROM realtime.outbox
WHERE topic = 'example-orders:1042' ORDER BY seq;

-- Pause a subscription (its backlog waits), or replay a topic to it from a seq.
UPDATE realtime.outbox_subscriptions SET enabled = false WHERE room = 'ops:example-orders';
UPDATE realtime.outbox_cursors c SET last_seq = 0, failures = 0, next_attempt_at = now()
FROM realtime.outbox_subscriptions s
WHERE s.id = c.subscription_id AND s.room = 'ops:example-orders';

-- 4. Retention: events older than 7 days that every enabled subscription received.
SELECT realtime.prune_outbox('7 days') AS pruned;

-- Clean up the examples.
DELETE FROM realtime.outbox_subscriptions WHERE topic_pattern LIKE 'example-orders:%';
DELETE FROM realtime.outbox WHERE topic LIKE 'example-orders:%';
DELETE FROM realtime.outbox_topics WHERE topic LIKE 'example-orders:%';
