-- Collaborative documents (Yjs CRDTs): every accepted update is a row, versions are full
-- snapshots, and the server keeps a JSON projection of each document for SQL readers.
--
-- A document's name is a room name (for example trip:42) and it is authorized like the room.
-- Loading a document = its latest version + the updates with a higher seq. Updates stream
-- through the publication, so every node (and every editor) receives updates written by any
-- other node or by SQL.

CREATE TABLE realtime.docs (
    doc                text        PRIMARY KEY,
    last_seq           bigint      NOT NULL DEFAULT 0,
    content            jsonb       NOT NULL DEFAULT '{}',
    content_seq        bigint      NOT NULL DEFAULT 0,
    content_updated_at timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT docs_doc_format
        CHECK (length(doc) BETWEEN 1 AND 200 AND doc ~ '^[A-Za-z0-9_.:\-]+$'),
    CONSTRAINT docs_last_seq_not_negative CHECK (last_seq >= 0)
);
COMMENT ON TABLE realtime.docs IS
    'One row per collaborative document: its update counter and its JSON projection. Created '
    'on first use. Never delete a row of a document that has updates or versions.';
COMMENT ON COLUMN realtime.docs.doc IS
    'Document name, a room name: 1-200 characters from A-Z a-z 0-9 _ . : -';
COMMENT ON COLUMN realtime.docs.last_seq IS
    'Seq of the document''s latest update. Writers lock the row until they commit, so update '
    'seqs are gap-free and in commit order.';
COMMENT ON COLUMN realtime.docs.content IS
    'The document as JSON (every root type by name; trip documents: title, description, '
    'itinerary, budget, notes, comments, collaborators), kept current by the server: it '
    'reflects the updates up to content_seq, at most about a second behind the editors.';
COMMENT ON COLUMN realtime.docs.content_seq IS 'The update seq content reflects.';

CREATE TABLE realtime.doc_updates (
    doc        text        NOT NULL,
    seq        bigint      NOT NULL,
    update     bytea       NOT NULL,
    origin     text,
    user_id    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doc, seq),
    CONSTRAINT doc_updates_size CHECK (octet_length(update) BETWEEN 1 AND 1048576)
);
COMMENT ON TABLE realtime.doc_updates IS
    'Yjs updates (v1 encoding) not yet merged into a version, append-only: insert doc and '
    'update (and optionally user_id); seq is assigned by a trigger. Every committed row reaches '
    'the document''s editors on every node. Rows covered by a version are deleted by '
    'compaction.';
COMMENT ON COLUMN realtime.doc_updates.update IS
    'One Yjs update, encoded with Y.encodeStateAsUpdate / the v1 update encoding.';
COMMENT ON COLUMN realtime.doc_updates.origin IS
    'Id of the server process that accepted the update from an editor (it has already '
    'applied it); NULL for updates written with SQL.';
COMMENT ON COLUMN realtime.doc_updates.user_id IS 'The editor''s user id (JWT sub), if any.';

CREATE TABLE realtime.doc_versions (
    doc           text        NOT NULL,
    version       bigint      GENERATED ALWAYS AS IDENTITY,
    state         bytea       NOT NULL,
    upto_seq      bigint      NOT NULL,
    reason        text        NOT NULL,
    restored_from bigint,
    user_id       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doc, version),
    CONSTRAINT doc_versions_reason_valid CHECK (reason IN ('edit', 'restore'))
);
CREATE INDEX doc_versions_created_at_idx ON realtime.doc_versions (created_at);
COMMENT ON TABLE realtime.doc_versions IS
    'Version history: full snapshots of a document, taken while it is edited (every 10 updates '
    'or 5 minutes, at most one per TRIPTRIP_DOC_VERSION_INTERVAL) and on every restore. The '
    'latest version of a document is also the base it loads from. Retained 90 days '
    '(realtime.prune_doc_versions), except each document''s latest.';
COMMENT ON COLUMN realtime.doc_versions.state IS 'The whole document as one Yjs update (v1).';
COMMENT ON COLUMN realtime.doc_versions.upto_seq IS
    'The version contains every update of the document with seq <= upto_seq.';
COMMENT ON COLUMN realtime.doc_versions.reason IS
    'edit: taken while the document was edited; restore: taken right after a restore.';
COMMENT ON COLUMN realtime.doc_versions.restored_from IS
    'For a restore: the version whose content was restored.';

-- Seq assignment for writers that omit seq (services writing SQL), and validation for all.
-- The server's group commit assigns the seqs of a whole batch itself, under the same row lock.
CREATE FUNCTION realtime.doc_updates_assign_seq() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last bigint;
BEGIN
    IF NEW.doc IS NULL OR length(NEW.doc) NOT BETWEEN 1 AND 200
       OR NEW.doc !~ '^[A-Za-z0-9_.:\-]+$' THEN
        RAISE EXCEPTION 'realtime.doc_updates: invalid doc %',
                coalesce(quote_literal(left(NEW.doc, 80)), 'NULL')
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'doc_updates',
                  HINT = 'A document name is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF NEW.update IS NULL OR octet_length(NEW.update) NOT BETWEEN 1 AND 1048576 THEN
        RAISE EXCEPTION 'realtime.doc_updates: update must be 1-1048576 bytes'
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'doc_updates',
                  CONSTRAINT = 'doc_updates_size';
    END IF;
    IF NEW.seq IS NULL THEN
        INSERT INTO realtime.docs (doc) VALUES (NEW.doc) ON CONFLICT DO NOTHING;
        UPDATE realtime.docs d SET last_seq = d.last_seq + 1
        WHERE d.doc = NEW.doc
        RETURNING d.last_seq INTO NEW.seq;
    ELSE
        SELECT d.last_seq INTO v_last FROM realtime.docs d WHERE d.doc = NEW.doc;
        IF v_last IS NULL OR NEW.seq NOT BETWEEN 1 AND v_last THEN
            RAISE EXCEPTION 'realtime.doc_updates: seq % was not reserved; omit seq', NEW.seq
                USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'doc_updates';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION realtime.doc_updates_assign_seq() IS
    'BEFORE INSERT trigger of realtime.doc_updates: validates the row and, when seq is omitted, '
    'locks the document''s counter in realtime.docs (creating it on first use) and assigns '
    'last_seq + 1. The lock is held until commit: seqs are gap-free and in commit order.';
CREATE TRIGGER doc_updates_assign_seq
    BEFORE INSERT ON realtime.doc_updates
    FOR EACH ROW EXECUTE FUNCTION realtime.doc_updates_assign_seq();

CREATE FUNCTION realtime.prune_doc_versions(older_than interval DEFAULT '90 days')
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_pruned bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.prune_doc_versions: older_than must be a non-negative '
                        'interval, not %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM realtime.doc_versions v
    WHERE v.created_at <= now() - older_than
      AND v.version < (SELECT max(l.version) FROM realtime.doc_versions l WHERE l.doc = v.doc);
    GET DIAGNOSTICS v_pruned = ROW_COUNT;
    RETURN v_pruned;
END
$$;
COMMENT ON FUNCTION realtime.prune_doc_versions(interval) IS
    'Deletes versions older than older_than (default 90 days), never a document''s latest '
    'version (the base it loads from), and returns how many.';

CREATE VIEW realtime.doc_history AS
SELECT v.doc, v.version, v.reason, v.restored_from, v.user_id, v.upto_seq, v.created_at,
       octet_length(v.state) AS state_bytes
FROM realtime.doc_versions v;
COMMENT ON VIEW realtime.doc_history IS
    'Every retained version of every document, without the binary state; order by version.';

ALTER PUBLICATION triptrip_realtime ADD TABLE realtime.doc_updates;
