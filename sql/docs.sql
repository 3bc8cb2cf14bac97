-- Collaborative documents (Yjs) seen from SQL: read the JSON projection, write an update as a
-- service, browse the version history, prune old versions.

-- A service writes a Yjs update (v1 encoding, e.g. Y.encodeStateAsUpdate or the `update`
-- event of a Y.Doc) in its own transaction. The trigger validates it and assigns the next
-- seq; after commit every editor of trip:42, on every node, receives it. This one inserts
-- "Check-in after 15:00" into the `notes` text.
INSERT INTO realtime.doc_updates (doc, update, user_id)
VALUES ('trip:42',
        '\x01019221000401056e6f74657314436865636b2d696e2061667465722031353a303000',
        'booking-service')
RETURNING doc, seq;

-- The document as JSON, kept current by the server while it is loaded (about a second
-- behind the editors); content_seq tells which update it reflects. Analysts query it like
-- any jsonb column.
SELECT doc, last_seq, content_seq, content_updated_at, content
FROM realtime.docs
WHERE doc = 'trip:42';

SELECT d.doc, item ->> 'title' AS item_title, item ->> 'day' AS day
FROM realtime.docs d, jsonb_array_elements(coalesce(d.content -> 'itinerary', '[]')) AS item
ORDER BY d.doc;

-- Updates not yet merged into a version (the server's compaction deletes covered ones).
SELECT doc, seq, octet_length(update) AS bytes, origin, user_id, created_at
FROM realtime.doc_updates
WHERE doc = 'trip:42'
ORDER BY seq;

-- Version history: a version every 10 updates or 5 minutes while edited, and one per
-- restore. The states themselves are in realtime.doc_versions.state.
SELECT doc, version, reason, restored_from, user_id, upto_seq, state_bytes, created_at
FROM realtime.doc_history
WHERE doc = 'trip:42'
ORDER BY version DESC;

-- Retention (the server runs this hourly): versions older than 90 days go, except each
-- document's latest, which documents load from.
SELECT realtime.prune_doc_versions();
SELECT realtime.prune_doc_versions(interval '30 days');

-- Bad input changes nothing and says why:
--   INSERT INTO realtime.doc_updates (doc, update) VALUES ('no spaces', '\x00');
--     ERROR: realtime.doc_updates: invalid doc 'no spaces'
--   INSERT INTO realtime.doc_updates (doc, update) VALUES ('trip:42', '');
--     ERROR: realtime.doc_updates: update must be 1-1048576 bytes
--   INSERT INTO realtime.doc_updates (doc, seq, update) VALUES ('trip:42', 999999, '\x00');
--     ERROR: realtime.doc_updates: seq 999999 was not reserved; omit seq
--   SELECT realtime.prune_doc_versions(interval '-1 day');
--     ERROR: realtime.prune_doc_versions: older_than must be a non-negative interval
