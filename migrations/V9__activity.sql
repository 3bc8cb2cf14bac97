-- The activity feed (seed §6.2): services record what users did (trip.created,
-- trip.item_added, booking.confirmed, …) with plain SQL; committed activities are pushed live to
-- the users allowed to see them and served as a cursor-paginated feed.
--
-- Visibility: private (the actor only), collaborators (the actor and whoever may join the
-- activity's room, the trip), public (also the actor's followers; anyone who asks for the room's
-- feed and may join it).

CREATE TABLE realtime.follows (
    follower_id text        NOT NULL,
    followee_id text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CONSTRAINT follows_not_self CHECK (follower_id <> followee_id),
    CONSTRAINT follows_ids CHECK (length(follower_id) BETWEEN 1 AND 200
                                  AND length(followee_id) BETWEEN 1 AND 200)
);
CREATE INDEX follows_followee_idx ON realtime.follows (followee_id);
COMMENT ON TABLE realtime.follows IS
    'Who follows whom (user ids are JWT sub claims): a follower sees the followee''s public '
    'activities in their feed.';

CREATE TABLE realtime.activities (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        text        NOT NULL,
    actor_id    text        NOT NULL,
    actor       jsonb       NOT NULL DEFAULT '{}',
    target_type text,
    target_id   text,
    target_name text,
    room        text,
    context     jsonb       NOT NULL DEFAULT '{}',
    visibility  text        NOT NULL DEFAULT 'collaborators',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT activities_type_format
        CHECK (length(type) BETWEEN 3 AND 100 AND type ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$'),
    CONSTRAINT activities_actor_id CHECK (length(actor_id) BETWEEN 1 AND 200),
    CONSTRAINT activities_actor_object
        CHECK (jsonb_typeof(actor) = 'object' AND octet_length(actor::text) <= 4096),
    CONSTRAINT activities_target
        CHECK (length(target_type) <= 100 AND length(target_id) <= 200 AND length(target_name) <= 500),
    CONSTRAINT activities_room
        CHECK (length(room) BETWEEN 1 AND 200 AND room ~ '^[A-Za-z0-9_.:\-]+$'),
    CONSTRAINT activities_context_object
        CHECK (jsonb_typeof(context) = 'object' AND octet_length(context::text) <= 16384),
    CONSTRAINT activities_visibility
        CHECK (visibility IN ('public', 'private', 'collaborators')),
    CONSTRAINT activities_collaborators_need_a_room
        CHECK (visibility <> 'collaborators' OR room IS NOT NULL)
);
CREATE INDEX activities_room_idx ON realtime.activities (room, created_at DESC, id DESC);
CREATE INDEX activities_actor_idx ON realtime.activities (actor_id, created_at DESC, id DESC);
CREATE INDEX activities_target_idx ON realtime.activities (target_id, created_at DESC, id DESC);
CREATE INDEX activities_created_idx ON realtime.activities (created_at DESC, id DESC);
COMMENT ON TABLE realtime.activities IS
    'What users did, for feeds. Insert type, actor_id (and actor details, target, room, context, '
    'visibility) or call realtime.record_activity. After commit the activity reaches, live, the '
    'connections allowed to see it; GET /api/activity pages through it.';
COMMENT ON COLUMN realtime.activities.type IS
    'Dotted lowercase name, for example trip.created, trip.item_added, booking.confirmed, '
    'user.followed, review.posted.';
COMMENT ON COLUMN realtime.activities.actor IS
    'Display details of the actor as a JSON object, for example {"name": …, "avatar_url": …}.';
COMMENT ON COLUMN realtime.activities.room IS
    'The room (usually the trip, for example trip:42) whose collaborators see the activity: '
    'whoever may join it (token rooms claim or realtime.can_join).';
COMMENT ON COLUMN realtime.activities.visibility IS
    'private: the actor only; collaborators: the actor and the room''s collaborators (room '
    'required); public: also the actor''s followers.';

CREATE FUNCTION realtime.record_activity(
    type        text,
    actor_id    text,
    room        text DEFAULT NULL,
    visibility  text DEFAULT 'collaborators',
    target_type text DEFAULT NULL,
    target_id   text DEFAULT NULL,
    target_name text DEFAULT NULL,
    context     jsonb DEFAULT '{}',
    actor       jsonb DEFAULT '{}'
) RETURNS bigint
LANGUAGE sql
AS $$
    INSERT INTO realtime.activities AS a
        (type, actor_id, room, visibility, target_type, target_id, target_name, context, actor)
    VALUES (record_activity.type, record_activity.actor_id, record_activity.room,
            record_activity.visibility, record_activity.target_type, record_activity.target_id,
            record_activity.target_name, record_activity.context, record_activity.actor)
    RETURNING a.id
$$;
COMMENT ON FUNCTION realtime.record_activity(text, text, text, text, text, text, text, jsonb, jsonb) IS
    'Records an activity in the caller''s transaction and returns its id.';

-- Whether viewer may see activity a. Room access is realtime.can_join (membership rows or an
-- overriding rule); rooms granted by a token's rooms claim are checked by the server itself.
CREATE FUNCTION realtime.can_see_activity(viewer text, a realtime.activities) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.actor_id = viewer
        OR (a.visibility IN ('collaborators', 'public') AND a.room IS NOT NULL
            AND coalesce(realtime.can_join(viewer, a.room), false))
        OR (a.visibility = 'public'
            AND EXISTS (SELECT 1 FROM realtime.follows f
                        WHERE f.follower_id = viewer AND f.followee_id = a.actor_id))
$$;

-- A user's feed, newest first, keyset-paginated by (created_at, id): their own activities,
-- their rooms' (membership rows), and the public ones of whom they follow.
CREATE FUNCTION realtime.activity_feed(
    viewer      text,
    before_at   timestamptz DEFAULT NULL,
    before_id   bigint DEFAULT NULL,
    page_size   int DEFAULT 20
) RETURNS SETOF realtime.activities
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF page_size IS NULL OR page_size NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'realtime.activity_feed: page_size must be 1-100'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (before_at IS NULL) <> (before_id IS NULL) THEN
        RAISE EXCEPTION 'realtime.activity_feed: give both before_at and before_id, or neither'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT a.* FROM (
        SELECT * FROM realtime.activities x WHERE x.actor_id = viewer
        UNION
        SELECT x.* FROM realtime.activities x
        JOIN realtime.room_members m ON m.room = x.room AND m.user_id = viewer
        WHERE x.visibility IN ('collaborators', 'public')
        UNION
        SELECT x.* FROM realtime.activities x
        JOIN realtime.follows f ON f.followee_id = x.actor_id AND f.follower_id = viewer
        WHERE x.visibility = 'public'
    ) a
    WHERE before_at IS NULL OR (a.created_at, a.id) < (before_at, before_id)
    ORDER BY a.created_at DESC, a.id DESC
    LIMIT page_size;
END
$$;
COMMENT ON FUNCTION realtime.activity_feed(text, timestamptz, bigint, int) IS
    'The viewer''s feed, newest first: own activities, activities of rooms they are a member '
    'of (collaborators and public), public activities of whom they follow. Page with the last '
    'row''s (created_at, id).';

CREATE FUNCTION realtime.prune_activities(older_than interval DEFAULT '365 days') RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.prune_activities: older_than must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM realtime.activities a WHERE a.created_at < now() - older_than;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION realtime.prune_activities(interval) IS
    'Deletes activities older than older_than (a year by default); run hourly by the server.';

ALTER PUBLICATION triptrip_realtime ADD TABLE realtime.activities;
