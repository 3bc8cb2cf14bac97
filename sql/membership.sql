-- For services: who may join and publish to a room.
-- A user may join a room when realtime.can_join(user_id, room) says so, and publish into it
-- when realtime.can_publish(user_id, room) does; the server asks at join and publish time. A
-- JWT's `rooms` claim (room patterns such as trip:*) grants access in addition to these.
-- Run with psql; exercised by tests/sql_examples.rs and tests/sql_rooms.rs; safe to re-run.

-- 1. Add members. Roles: reader (join and receive), writer (also publish; the default),
--    owner (a writer who owns the room). An upsert, so re-running changes nothing.
INSERT INTO realtime.room_members (room, user_id, role) VALUES
    ('trip:42', 'alice', 'owner'),
    ('trip:42', 'bob',   'writer'),
    ('trip:42', 'carol', 'reader'),
    ('trip:42', 'dave',  'writer')
ON CONFLICT (room, user_id) DO UPDATE SET role = EXCLUDED.role;

-- 2. What the default rules answer: members join, writers and owners publish.
SELECT u.user_id,
       realtime.can_join(u.user_id, 'trip:42')    AS can_join,
       realtime.can_publish(u.user_id, 'trip:42') AS can_publish
FROM unnest(ARRAY['alice', 'bob', 'carol', 'dave', 'mallory']) AS u(user_id)
ORDER BY u.user_id;

-- 3. Change a role: takes effect at the member's next publish.
UPDATE realtime.room_members SET role = 'reader' WHERE room = 'trip:42' AND user_id = 'bob';

-- 4. Remove a member. The DELETE is streamed to the server, which removes that user's
--    connected clients from the room live (unless their JWT's rooms claim still grants it).
DELETE FROM realtime.room_members WHERE room = 'trip:42' AND user_id = 'dave';

-- 5. The members of a room, and the rooms of a user.
SELECT user_id, role, created_at FROM realtime.room_members WHERE room = 'trip:42' ORDER BY user_id;
SELECT room, role FROM realtime.room_members WHERE user_id = 'alice' ORDER BY room;

-- 6. Your own rule: replace can_join (or can_publish) with CREATE OR REPLACE, keeping the
--    signature (user_id text, room text) RETURNS boolean. Keep it STABLE and fast: it runs at
--    every join. This one also lets anybody join rooms named public:*.
CREATE OR REPLACE FUNCTION realtime.can_join(user_id text, room text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT starts_with(can_join.room, 'public:')
        OR EXISTS (
            SELECT 1 FROM realtime.room_members m
            WHERE m.room = can_join.room AND m.user_id = can_join.user_id
        )
$$;
SELECT realtime.can_join('mallory', 'public:announcements') AS mallory_joins_public_room,
       realtime.can_join('mallory', 'trip:42')              AS mallory_joins_trip_42;

-- 7. Back to the default rule (as migrations/V2__rooms.sql defines it), so that this example
--    leaves the database as it found it.
CREATE OR REPLACE FUNCTION realtime.can_join(user_id text, room text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (
        SELECT 1 FROM realtime.room_members m
        WHERE m.room = can_join.room AND m.user_id = can_join.user_id
    )
$$;
SELECT realtime.can_join('mallory', 'public:announcements') AS mallory_joins_public_room;
