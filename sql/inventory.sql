-- Live inventory, reservations, price alerts and bookings, for services, operators and
-- analysts (seed §1.1, §4.4, §7.3). Run as a whole by tests/sql_examples.rs against a migrated
-- database.

-- 1. Services: the catalog is plain rows. Every committed change reaches the resource's
-- subscribers (inventory:update, with the row's version) within milliseconds.
INSERT INTO realtime.inventory (resource_id, kind, name, available, total, price, currency)
VALUES ('example:hotel:kyoto-inn:twin', 'hotel_room', 'Kyoto Inn, twin room', 3, 10, 12000, 'JPY'),
       ('example:hotel:gion-house:twin', 'hotel_room', 'Gion House, twin room', 5, 8, 14500, 'JPY'),
       ('example:hotel:arashiyama:twin', 'hotel_room', 'Arashiyama Lodge, twin room', 0, 6, 9800, 'JPY')
ON CONFLICT (resource_id) DO NOTHING;

-- Restock and reprice in one statement; version and updated_at are set by the trigger.
UPDATE realtime.inventory SET total = total + 2, available = available + 2, price = 11500
WHERE resource_id = 'example:hotel:kyoto-inn:twin'
RETURNING resource_id, available, total, price, version, updated_at;

-- 2. Services: reserve inside your own transaction. One UPDATE under the row lock takes the
-- units, so concurrent reservers are served first come first served and never oversold. The
-- result is JSON; after commit the user's connections get reservation:confirmed.
BEGIN;
SELECT realtime.reserve('example:hotel:kyoto-inn:twin', 'example-alice', 2,
                        idempotency_key => 'checkout:alice:42') AS reservation;
-- ... your own bookkeeping, for example INSERT INTO payments ...
COMMIT;

-- A retry with the same key takes nothing and returns the first reservation ("replayed": true).
SELECT realtime.reserve('example:hotel:kyoto-inn:twin', 'example-alice', 2,
                        idempotency_key => 'checkout:alice:42') ->> 'replayed' AS replayed;

-- Asking for more than is left is a rejection, not an error: it lists up to five rooms of the
-- same kind that have enough units (same currency first, then cheapest), and the user's
-- connections get reservation:failed with them.
SELECT r ->> 'status' AS status, r ->> 'reason' AS reason, r -> 'alternatives' AS alternatives
FROM realtime.reserve('example:hotel:arashiyama:twin', 'example-bob', 1) AS r;

-- Give units back (at most up to total); releasing twice changes nothing.
SELECT realtime.release((SELECT id FROM realtime.reservations
                         WHERE idempotency_key = 'checkout:alice:42')) ->> 'status' AS status;

-- 3. Analysts: every attempt is a row; sell-through and rejections per resource.
SELECT resource_id,
       count(*) FILTER (WHERE status = 'confirmed') AS confirmed,
       count(*) FILTER (WHERE status = 'released') AS released,
       count(*) FILTER (WHERE status = 'rejected') AS rejected,
       coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0) AS units_held
FROM realtime.reservations
WHERE resource_id LIKE 'example:%'
GROUP BY resource_id ORDER BY resource_id;

-- 4. Price alerts: a drop across the threshold creates a price_alert notification (in-app and
-- push) in the same transaction. The user must be in realtime.users.
INSERT INTO realtime.users (user_id) VALUES ('example-alice') ON CONFLICT DO NOTHING;
INSERT INTO realtime.price_alerts (user_id, resource_id, below)
VALUES ('example-alice', 'example:hotel:gion-house:twin', 13000);
INSERT INTO realtime.price_alerts (user_id, resource_id, percent_drop)
VALUES ('example-alice', 'example:hotel:kyoto-inn:twin', 20);
UPDATE realtime.inventory SET price = 12900 WHERE resource_id = 'example:hotel:gion-house:twin';
UPDATE realtime.inventory SET price = 12500 WHERE resource_id = 'example:hotel:gion-house:twin';
SELECT title, body, payload ->> 'threshold' AS threshold
FROM realtime.notifications WHERE user_id = 'example-alice' AND type = 'price_alert';
SELECT a.id, a.resource_id, realtime.price_alert_threshold(a) AS fires_at_or_below,
       a.last_notified_at
FROM realtime.price_alerts a WHERE a.user_id = 'example-alice' ORDER BY a.id;

-- 5. Bookings: create them with INSERT; change their status with realtime.set_booking_status,
-- which lets the more advanced status win (pending < confirmed < cancelled), lets admins
-- override, and records every request.
INSERT INTO realtime.bookings (booking_id, user_id, resource_id)
VALUES ('example-BK-1', 'example-alice', 'example:hotel:kyoto-inn:twin');
SELECT realtime.set_booking_status('example-BK-1', 'confirmed', 'payment-service');
SELECT realtime.set_booking_status('example-BK-1', 'cancelled', 'example-alice', reason => 'plans changed');
SELECT realtime.set_booking_status('example-BK-1', 'confirmed', 'payment-service') ->> 'result' AS late_confirm;
SELECT realtime.set_booking_status('example-BK-1', 'confirmed', 'support:kenji', admin => true,
                                   reason => 'cancelled by mistake') ->> 'result' AS override;

-- 6. Analysts: the resolution history of a booking (seed §7.3), in the order it was resolved.
SELECT from_status, requested, result, status_after, actor, admin, reason, at
FROM realtime.booking_status_history WHERE booking_id = 'example-BK-1' ORDER BY id;

-- 7. Operators: idempotency keys last 24 hours (each user's expired keys also go at their next
-- reservation).
SELECT realtime.prune_reservation_keys() AS pruned_keys;

-- Clean up the examples.
DELETE FROM realtime.booking_status_history WHERE booking_id = 'example-BK-1';
DELETE FROM realtime.bookings WHERE booking_id = 'example-BK-1';
DELETE FROM realtime.reservation_keys WHERE user_id IN ('example-alice', 'example-bob');
DELETE FROM realtime.reservations WHERE resource_id LIKE 'example:%';
DELETE FROM realtime.inventory WHERE resource_id LIKE 'example:%';
DELETE FROM realtime.users WHERE user_id = 'example-alice';
