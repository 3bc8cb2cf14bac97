-- Notifications for services, operators and analysts (seed chapter 5).
-- Run as a whole by tests/sql_examples.rs against a migrated database.

-- 1. Services: register users (user_id is the JWT sub), with their contact points and time zone.
INSERT INTO realtime.users (user_id, time_zone, email, phone)
VALUES ('example-alice', 'Asia/Tokyo', 'alice@example.com', '+819012345678'),
       ('example-bob', 'Europe/Paris', NULL, NULL)
ON CONFLICT (user_id) DO UPDATE SET time_zone = excluded.time_zone;

-- Devices and webhooks (apps usually register devices with POST /api/push-tokens).
INSERT INTO realtime.push_tokens (user_id, platform, token)
VALUES ('example-alice', 'fcm', 'example-fcm-registration-token')
ON CONFLICT (platform, token) DO NOTHING;

-- 2. Services: create a notification inside your own transaction. Routing (channels by type,
-- preferences, do-not-disturb, the critical override) happens in the same transaction; after
-- commit, Alice's connected devices get notification:new and the dispatchers send the rest.
BEGIN;
-- ... your business change, for example UPDATE bookings SET status = 'confirmed' ...
SELECT realtime.notify('example-alice', 'booking_confirmed',
                       '{"booking_id": "BK-1042", "hotel": "Kyoto Inn"}',
                       idempotency_key => 'booking:BK-1042:confirmed');
COMMIT;

-- The same key within 24 hours is a no-op that returns the first notification's id.
SELECT realtime.notify('example-alice', 'booking_confirmed', '{"booking_id": "BK-1042"}',
                       idempotency_key => 'booking:BK-1042:confirmed') AS same_id;

-- A plain INSERT works too; priority defaults to the type's.
INSERT INTO realtime.notifications (user_id, type, payload)
VALUES ('example-bob', 'trip_update', '{"message": "Day 2 now starts at 9:00"}');

-- 3. Operators: notification types (channels, priority, templates, ttl) are rows.
INSERT INTO realtime.notification_types
    (type, channels, priority, template, title_template, body_template, ttl)
VALUES ('checkin_reminder', '{in_app,push}', 'medium', 'checkin_reminder',
        'Check-in tomorrow', 'Check-in at {{hotel}} opens at {{time}}.', '1 day')
ON CONFLICT (type) DO NOTHING;
SELECT type, channels, priority, ttl, enabled FROM realtime.notification_types ORDER BY type;

-- Turn a channel off for everyone (not even critical notifications use it then), or change how
-- often it retries.
UPDATE realtime.notification_channels SET max_retries = 4 WHERE channel = 'email';
SELECT channel, enabled, max_retries FROM realtime.notification_channels ORDER BY channel;

-- 4. Preferences (apps usually use PUT /api/notifications/preferences): no push at all, except
-- price alerts; a do-not-disturb window in the user's local time.
INSERT INTO realtime.notification_preferences (user_id, channel, type, enabled)
VALUES ('example-bob', 'push', NULL, false), ('example-bob', 'push', 'price_alert', true)
ON CONFLICT ON CONSTRAINT notification_preferences_key DO UPDATE SET enabled = excluded.enabled;
UPDATE realtime.users SET dnd_start = '23:00', dnd_end = '06:30' WHERE user_id = 'example-bob';
SELECT realtime.channel_wanted('example-bob', 'push', 'trip_update') AS push_for_trip_updates,
       realtime.channel_wanted('example-bob', 'push', 'price_alert') AS push_for_price_alerts,
       realtime.dnd_until('example-bob', '2026-01-19 23:30+01') AS held_until;

-- 5. Analysts: each delivery's state and its full history.
SELECT n.id, n.type, n.seq, d.channel, d.state, d.attempts, d.next_attempt_at, d.last_error
FROM realtime.notifications n
JOIN realtime.notification_deliveries d ON d.notification_id = n.id
WHERE n.user_id = 'example-alice'
ORDER BY n.id, d.channel;

SELECT e.delivery_id, e.channel, e.event, e.attempt, e.error, e.at
FROM realtime.notification_delivery_events e
JOIN realtime.notifications n ON n.id = e.notification_id
WHERE n.user_id = 'example-alice'
ORDER BY e.delivery_id, e.at;

-- Delivery and failure rates per channel over the last day.
SELECT channel,
       count(*) AS deliveries,
       count(*) FILTER (WHERE state IN ('sent', 'delivered', 'read')) AS delivered,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'expired') AS expired,
       round(avg(attempts), 2) AS avg_attempts
FROM realtime.notification_deliveries
WHERE created_at > now() - interval '1 day'
GROUP BY channel ORDER BY channel;

-- The badge: unread count and the latest in-app seq per user.
SELECT user_id, unread, last_seq FROM realtime.notification_badges ORDER BY user_id;

-- 6. Reading and dismissing from SQL (clients use notification:read / POST
-- /api/notifications/read): the badge and the in-app delivery follow.
SELECT realtime.mark_notifications('example-alice',
       ARRAY(SELECT id FROM realtime.notifications WHERE user_id = 'example-alice'), 'read');

-- 7. Retention: notifications and delivery history older than 90 days, idempotency keys older
-- than a day (the server runs this hourly).
SELECT realtime.prune_notifications('90 days') AS pruned;

-- Clean up the examples.
DELETE FROM realtime.users WHERE user_id IN ('example-alice', 'example-bob');
DELETE FROM realtime.notification_types WHERE type = 'checkin_reminder';
UPDATE realtime.notification_channels SET max_retries = 5 WHERE channel = 'email';
