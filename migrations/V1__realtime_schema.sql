-- The schema that holds everything TripTrip Realtime owns, and the publication its
-- replication worker streams. Later migrations add their tables to the publication.
CREATE SCHEMA IF NOT EXISTS realtime;
COMMENT ON SCHEMA realtime IS
    'TripTrip Realtime: tables services write with plain SQL; committed rows are delivered to clients.';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'triptrip_realtime') THEN
        CREATE PUBLICATION triptrip_realtime;
    END IF;
END
$$;
COMMENT ON PUBLICATION triptrip_realtime IS
    'Tables whose committed changes TripTrip Realtime streams through its logical replication slot.';
