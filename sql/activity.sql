-- The activity feed for services and analysts (seed §6.2). Run as a whole by
-- tests/sql_examples.rs.

-- 1. Services: record what a user did, in the same transaction as the change itself.
INSERT INTO realtime.room_members (room, user_id) VALUES ('example-trip:42', 'example-bob')
ON CONFLICT DO NOTHING;
INSERT INTO realtime.follows (follower_id, followee_id) VALUES ('example-carol', 'example-alice')
ON CONFLICT DO NOTHING;

BEGIN;
-- ... INSERT INTO itinerary_items ... ;
SELECT realtime.record_activity('trip.item_added', 'example-alice', 'example-trip:42',
                                target_type => 'item', target_id => 'item-9',
                                target_name => 'Kinkaku-ji', context => '{"day": 2}',
                                actor => '{"name": "Alice", "avatar_url": "https://example.com/a.png"}');
COMMIT;

-- A public review (also seen by Alice's followers) and a private note (Alice only).
INSERT INTO realtime.activities (type, actor_id, visibility, target_type, target_id)
VALUES ('review.posted', 'example-alice', 'public', 'hotel', 'kyoto-inn'),
       ('trip.updated', 'example-alice', 'private', 'trip', '42');

-- 2. A user's feed, newest first, 20 per page; the next page starts after the last row's
-- (created_at, id).
SELECT id, type, actor_id, room, visibility, created_at
FROM realtime.activity_feed('example-bob', page_size => 20);
SELECT id, type, actor_id, visibility
FROM realtime.activity_feed('example-carol',
       before_at => now() + interval '1 minute', before_id => 9223372036854775807);

-- 3. Analysts: what happens in a trip, and who is most active.
SELECT type, count(*) AS activities, count(DISTINCT actor_id) AS actors
FROM realtime.activities WHERE room = 'example-trip:42' GROUP BY type ORDER BY activities DESC;
SELECT actor_id, count(*) FROM realtime.activities
WHERE created_at > now() - interval '7 days' GROUP BY actor_id ORDER BY count(*) DESC LIMIT 10;

-- 4. Retention (the server runs this hourly with a year).
SELECT realtime.prune_activities('365 days') AS pruned;

-- Clean up the examples.
DELETE FROM realtime.activities WHERE actor_id LIKE 'example-%';
DELETE FROM realtime.follows WHERE follower_id LIKE 'example-%';
DELETE FROM realtime.room_members WHERE room = 'example-trip:42';
