-- Live inventory (seed §1.1) and bookings (seed §4.4).
--
-- realtime.inventory is a state channel: services change rows with plain SQL (an UPDATE of
-- available, total or price), and every committed change streams to the resource's
-- subscribers with the row's new version. realtime.reserve() takes units under the row's lock,
-- so concurrent reservers are served first come first served and never oversold; every attempt
-- is a row in realtime.reservations, which streams to the reserving user (the losers' rows list
-- alternatives). A price drop across a user's alert threshold creates a price_alert
-- notification in the same transaction. realtime.set_booking_status() resolves status
-- conflicts by precedence (pending < confirmed < cancelled, admins override) and records every
-- request and its outcome in realtime.booking_status_history.

-- ---------------------------------------------------------------------------------------------
-- Inventory
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.inventory (
    resource_id text        PRIMARY KEY,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    available   int         NOT NULL,
    total       int         NOT NULL,
    price       numeric     NOT NULL,
    currency    text        NOT NULL,
    version     bigint      NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inventory_resource_id_format
        CHECK (length(resource_id) BETWEEN 1 AND 200 AND resource_id ~ '^[A-Za-z0-9_.:\-]+$'),
    CONSTRAINT inventory_kind_format CHECK (length(kind) BETWEEN 1 AND 50 AND kind ~ '^[a-z0-9_]+$'),
    CONSTRAINT inventory_name_length CHECK (length(name) BETWEEN 1 AND 200),
    CONSTRAINT inventory_available_not_negative CHECK (available >= 0),
    CONSTRAINT inventory_available_within_total CHECK (available <= total),
    CONSTRAINT inventory_price_range
        CHECK (price >= 0 AND price <= 1000000000000 AND scale(price) <= 4),
    CONSTRAINT inventory_currency_format CHECK (currency ~ '^[A-Z]{3}$')
);
CREATE INDEX inventory_kind_price_idx ON realtime.inventory (kind, price, name, resource_id);
COMMENT ON TABLE realtime.inventory IS
    'Bookable resources (hotel rooms, tickets, ...) and how many units are left: a state '
    'channel. Services INSERT and UPDATE rows with plain SQL; every committed change reaches the '
    'resource''s subscribers (inventory:update). Take units with realtime.reserve(), which never '
    'oversells; an UPDATE that would make available negative or larger than total is refused.';
COMMENT ON COLUMN realtime.inventory.resource_id IS
    'The resource''s id: 1-200 characters from A-Z a-z 0-9 _ . : - (for example hotel:42:deluxe).';
COMMENT ON COLUMN realtime.inventory.kind IS
    'What it is, 1-50 characters from a-z 0-9 _ (hotel_room, ticket, ...). Alternatives offered '
    'to a losing reserver are resources of the same kind.';
COMMENT ON COLUMN realtime.inventory.name IS 'Display name, 1-200 characters.';
COMMENT ON COLUMN realtime.inventory.available IS
    'Units that can still be reserved: 0 to total.';
COMMENT ON COLUMN realtime.inventory.total IS 'Units in all, at least available.';
COMMENT ON COLUMN realtime.inventory.price IS
    'Price of one unit, 0 to 10^12 with at most 4 decimal places (sent to clients as a string, '
    'so that no decimal is lost).';
COMMENT ON COLUMN realtime.inventory.currency IS 'ISO 4217 code, three capital letters (JPY, EUR).';
COMMENT ON COLUMN realtime.inventory.version IS
    'Set by the trigger: 1 on insert, +1 on every update, so it grows in commit order. Clients '
    'keep the highest version they saw and drop older states.';
COMMENT ON COLUMN realtime.inventory.updated_at IS
    'Set by the trigger: the start of the transaction that last changed the row.';

CREATE FUNCTION realtime.inventory_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.resource_id IS DISTINCT FROM OLD.resource_id THEN
        RAISE EXCEPTION 'realtime.inventory: resource_id cannot change (% to %)',
                quote_literal(left(OLD.resource_id, 80)),
                coalesce(quote_literal(left(NEW.resource_id, 80)), 'NULL')
            USING ERRCODE = 'integrity_constraint_violation', SCHEMA = 'realtime',
                  TABLE = 'inventory', HINT = 'Insert a new resource instead.';
    END IF;
    IF length(NEW.resource_id) NOT BETWEEN 1 AND 200 OR NEW.resource_id !~ '^[A-Za-z0-9_.:\-]+$' THEN
        RAISE EXCEPTION 'realtime.inventory: invalid resource_id %',
                quote_literal(left(NEW.resource_id, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'inventory',
                  CONSTRAINT = 'inventory_resource_id_format',
                  HINT = 'A resource_id is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF length(NEW.kind) NOT BETWEEN 1 AND 50 OR NEW.kind !~ '^[a-z0-9_]+$' THEN
        RAISE EXCEPTION 'realtime.inventory: invalid kind %', quote_literal(left(NEW.kind, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'inventory',
                  CONSTRAINT = 'inventory_kind_format',
                  HINT = 'A kind is 1-50 characters from a-z 0-9 _ (for example hotel_room).';
    END IF;
    IF NEW.available < 0 THEN
        RAISE EXCEPTION 'realtime.inventory: available of % would be %, below zero (oversold)',
                NEW.resource_id, NEW.available
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'inventory',
                  CONSTRAINT = 'inventory_available_not_negative',
                  HINT = 'Take units with realtime.reserve(), which refuses what is not there.';
    END IF;
    IF NEW.available > NEW.total THEN
        RAISE EXCEPTION 'realtime.inventory: available (%) of % exceeds total (%)',
                NEW.available, NEW.resource_id, NEW.total
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'inventory',
                  CONSTRAINT = 'inventory_available_within_total';
    END IF;
    IF NEW.price < 0 OR NEW.price > 1000000000000 OR scale(NEW.price) > 4 THEN
        RAISE EXCEPTION 'realtime.inventory: invalid price % of %', NEW.price, NEW.resource_id
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'inventory',
                  CONSTRAINT = 'inventory_price_range',
                  HINT = 'A price is 0 to 10^12 with at most 4 decimal places.';
    END IF;
    IF NEW.currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'realtime.inventory: invalid currency %',
                quote_literal(left(NEW.currency, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'inventory',
                  CONSTRAINT = 'inventory_currency_format',
                  HINT = 'Use an ISO 4217 code in capitals, such as JPY or EUR.';
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
    ELSE
        NEW.version := OLD.version + 1;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION realtime.inventory_check() IS
    'BEFORE INSERT OR UPDATE trigger of realtime.inventory: validates the row with clear '
    'messages, keeps resource_id, and sets version (1, then +1 per update) and updated_at.';
CREATE TRIGGER inventory_check BEFORE INSERT OR UPDATE ON realtime.inventory
    FOR EACH ROW EXECUTE FUNCTION realtime.inventory_check();

-- ---------------------------------------------------------------------------------------------
-- Reservations
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.reservations (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id     text        NOT NULL,
    user_id         text        NOT NULL,
    quantity        int         NOT NULL,
    status          text        NOT NULL,
    reason          text,
    alternatives    jsonb,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz,
    CONSTRAINT reservations_status CHECK (status IN ('confirmed', 'rejected', 'released')),
    CONSTRAINT reservations_reason
        CHECK ((status = 'rejected') = (reason IS NOT NULL)
               AND reason IN ('sold_out', 'insufficient', 'contended')),
    CONSTRAINT reservations_quantity CHECK (quantity BETWEEN 1 AND 10000),
    CONSTRAINT reservations_user_id_length CHECK (length(user_id) BETWEEN 1 AND 200)
);
CREATE INDEX reservations_user_idx ON realtime.reservations (user_id, created_at DESC, id DESC);
CREATE INDEX reservations_resource_idx ON realtime.reservations (resource_id, created_at);
COMMENT ON TABLE realtime.reservations IS
    'Every reservation attempt, written by realtime.reserve() (confirmed or rejected) and '
    'realtime.release() (released); not written directly. Streams to the reserving user''s '
    'connections: reservation:confirmed, reservation:failed (with alternatives), '
    'reservation:released. Rows are kept for analysts; resource_id is not a foreign key, so the '
    'history outlives a deleted resource.';
COMMENT ON COLUMN realtime.reservations.status IS
    'confirmed: the units are taken; rejected: nothing was taken (see reason); released: the '
    'units of a confirmed reservation were given back.';
COMMENT ON COLUMN realtime.reservations.reason IS
    'Why a reservation was rejected: sold_out (no unit left), insufficient (fewer units left '
    'than asked for), contended (units came and went five times while it tried).';
COMMENT ON COLUMN realtime.reservations.alternatives IS
    'For a rejected reservation: up to 5 resources of the same kind with at least quantity '
    'units available, same currency first, then by price and name: '
    '[{"resource_id", "name", "available", "price", "currency"}].';
COMMENT ON COLUMN realtime.reservations.idempotency_key IS
    'The key the reserver gave (per user, 24 hours): a repeat returns this reservation.';

CREATE TABLE realtime.reservation_keys (
    user_id        text        NOT NULL,
    key            text        NOT NULL,
    reservation_id bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
COMMENT ON TABLE realtime.reservation_keys IS
    'Idempotency keys of realtime.reserve(), per user, valid 24 hours: a repeat with the same '
    'key returns the first reservation and takes nothing. Concurrent repeats queue on the key''s '
    'unique index, so exactly one of them reserves. Expired keys of a user are deleted by that '
    'user''s next reservation, and all of them by realtime.prune_reservation_keys().';
COMMENT ON COLUMN realtime.reservation_keys.reservation_id IS
    'The reservation the key made (set before the reserving transaction commits).';

-- Writes to realtime.reservations come from realtime.reserve() and realtime.release() only: a
-- row inserted by hand would tell a user about units nobody took.
CREATE FUNCTION realtime.reservations_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('triptrip.reservation_writer', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'realtime.reservations is written by realtime.reserve() and realtime.release() only'
            USING ERRCODE = 'insufficient_privilege', SCHEMA = 'realtime', TABLE = 'reservations',
                  HINT = 'SELECT realtime.reserve(resource_id, user_id, quantity, idempotency_key)';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER reservations_guard BEFORE INSERT OR UPDATE ON realtime.reservations
    FOR EACH ROW EXECUTE FUNCTION realtime.reservations_guard();

CREATE FUNCTION realtime.reservation_json(r realtime.reservations) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'reservation_id', r.id, 'resource_id', r.resource_id, 'user_id', r.user_id,
        'quantity', r.quantity, 'status', r.status, 'reason', r.reason,
        'alternatives', r.alternatives, 'idempotency_key', r.idempotency_key,
        'created_at', r.created_at, 'released_at', r.released_at)
$$;
COMMENT ON FUNCTION realtime.reservation_json(realtime.reservations) IS
    'A reservation as the JSON object realtime.reserve() and realtime.release() return.';

CREATE FUNCTION realtime.reserve(
    resource_id     text,
    user_id         text,
    quantity        int DEFAULT 1,
    idempotency_key text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_owned        boolean;
    v_res          realtime.reservations;
    v_available    int;
    v_kind         text;
    v_currency     text;
    v_alternatives jsonb;
    v_attempt      int := 0;
BEGIN
    IF reserve.resource_id IS NULL OR length(reserve.resource_id) NOT BETWEEN 1 AND 200
       OR reserve.resource_id !~ '^[A-Za-z0-9_.:\-]+$' THEN
        RAISE EXCEPTION 'realtime.reserve: invalid resource_id %',
                coalesce(quote_literal(left(reserve.resource_id, 80)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A resource_id is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF reserve.user_id IS NULL OR length(reserve.user_id) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'realtime.reserve: user_id must be 1-200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF reserve.quantity IS NULL OR reserve.quantity NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'realtime.reserve: quantity must be 1-10000, not %',
                coalesce(reserve.quantity::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(reserve.idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'realtime.reserve: idempotency_key must be 1-200 characters (or NULL)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('triptrip.reservation_writer', 'on', true);

    IF reserve.idempotency_key IS NOT NULL THEN
        DELETE FROM realtime.reservation_keys k
        WHERE k.user_id = reserve.user_id AND k.created_at <= now() - interval '24 hours'
          AND k.key <> reserve.idempotency_key;
        -- A concurrent repeat waits here on the unique index until the first one ends.
        INSERT INTO realtime.reservation_keys AS k (user_id, key)
        VALUES (reserve.user_id, reserve.idempotency_key)
        ON CONFLICT (user_id, key) DO UPDATE SET reservation_id = NULL, created_at = now()
            WHERE k.created_at <= now() - interval '24 hours'
        RETURNING true INTO v_owned;
        IF v_owned IS NULL THEN
            SELECT r.* INTO v_res FROM realtime.reservations r
            WHERE r.id = (SELECT k.reservation_id FROM realtime.reservation_keys k
                          WHERE k.user_id = reserve.user_id AND k.key = reserve.idempotency_key);
            PERFORM set_config('triptrip.reservation_writer', '', true);
            IF v_res.resource_id IS DISTINCT FROM reserve.resource_id
               OR v_res.quantity IS DISTINCT FROM reserve.quantity THEN
                RAISE EXCEPTION 'realtime.reserve: idempotency_key % was used for another reservation (% of %)',
                        quote_literal(left(reserve.idempotency_key, 80)), v_res.quantity,
                        v_res.resource_id
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Use a new key for a new reservation.';
            END IF;
            RETURN realtime.reservation_json(v_res) || '{"replayed": true}';
        END IF;
    END IF;

    LOOP
        v_attempt := v_attempt + 1;
        -- First come, first served: reservers queue on the row lock, and each one re-reads
        -- available after the one before it committed.
        UPDATE realtime.inventory i SET available = i.available - reserve.quantity
        WHERE i.resource_id = reserve.resource_id AND i.available >= reserve.quantity
        RETURNING i.available INTO v_available;
        IF FOUND THEN
            INSERT INTO realtime.reservations AS r
                (resource_id, user_id, quantity, status, idempotency_key)
            VALUES (reserve.resource_id, reserve.user_id, reserve.quantity, 'confirmed',
                    reserve.idempotency_key)
            RETURNING r.* INTO v_res;
            EXIT;
        END IF;
        SELECT i.available, i.kind, i.currency INTO v_available, v_kind, v_currency
        FROM realtime.inventory i WHERE i.resource_id = reserve.resource_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'realtime.reserve: unknown resource %',
                    quote_literal(left(reserve.resource_id, 80))
                USING ERRCODE = 'no_data_found',
                      HINT = 'realtime.inventory has no row with this resource_id.';
        END IF;
        -- Units came back (a release) between the two statements: try again.
        CONTINUE WHEN v_available >= reserve.quantity AND v_attempt < 5;
        SELECT coalesce(jsonb_agg(a.item ORDER BY a.other_currency, a.price, a.name, a.resource_id),
                        '[]'::jsonb)
        INTO v_alternatives
        FROM (SELECT i.resource_id, i.name, i.price, i.currency <> v_currency AS other_currency,
                     jsonb_build_object('resource_id', i.resource_id, 'name', i.name,
                                        'available', i.available, 'price', i.price::text,
                                        'currency', i.currency) AS item
              FROM realtime.inventory i
              WHERE i.kind = v_kind AND i.resource_id <> reserve.resource_id
                AND i.available >= reserve.quantity
              ORDER BY i.currency <> v_currency, i.price, i.name, i.resource_id
              LIMIT 5) a;
        INSERT INTO realtime.reservations AS r
            (resource_id, user_id, quantity, status, reason, alternatives, idempotency_key)
        VALUES (reserve.resource_id, reserve.user_id, reserve.quantity, 'rejected',
                CASE WHEN v_available >= reserve.quantity THEN 'contended'
                     WHEN v_available = 0 THEN 'sold_out'
                     ELSE 'insufficient' END,
                v_alternatives, reserve.idempotency_key)
        RETURNING r.* INTO v_res;
        EXIT;
    END LOOP;

    IF reserve.idempotency_key IS NOT NULL THEN
        UPDATE realtime.reservation_keys k SET reservation_id = v_res.id
        WHERE k.user_id = reserve.user_id AND k.key = reserve.idempotency_key;
    END IF;
    PERFORM set_config('triptrip.reservation_writer', '', true);
    RETURN realtime.reservation_json(v_res) || jsonb_build_object('available', v_available);
END
$$;
COMMENT ON FUNCTION realtime.reserve(text, text, int, text) IS
    'Reserves quantity (1-10000) units of a resource for user_id in the caller''s transaction and '
    'returns the reservation as JSON (reservation_id, status confirmed or rejected, reason, '
    'alternatives, available: units left as this call saw them). Never oversells: units are '
    'taken by one UPDATE under the row lock, so concurrent reservers are served in the order they '
    'reach the lock, and a reserver that finds too few units is rejected without waiting for '
    'later ones. A rejection lists up to 5 alternatives. With an idempotency_key already used '
    'by the user within 24 hours, nothing is taken and the first reservation is returned with '
    '"replayed": true (an error if that was for another resource or quantity). Unknown resource: '
    'SQLSTATE P0002; invalid arguments: 22023. After commit the user''s connections get '
    'reservation:confirmed or reservation:failed.';

CREATE FUNCTION realtime.release(reservation_id bigint, user_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_res       realtime.reservations;
    v_available int;
BEGIN
    SELECT r.* INTO v_res FROM realtime.reservations r
    WHERE r.id = release.reservation_id FOR UPDATE;
    IF NOT FOUND OR (release.user_id IS NOT NULL AND v_res.user_id <> release.user_id) THEN
        RAISE EXCEPTION 'realtime.release: no reservation %',
                coalesce(release.reservation_id::text, 'NULL')
                || CASE WHEN release.user_id IS NULL THEN ''
                        ELSE ' of user ' || quote_literal(left(release.user_id, 80)) END
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_res.status = 'rejected' THEN
        RAISE EXCEPTION 'realtime.release: reservation % was rejected; it holds no units', v_res.id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_res.status = 'released' THEN
        RETURN realtime.reservation_json(v_res) || '{"already_released": true}';
    END IF;
    PERFORM set_config('triptrip.reservation_writer', 'on', true);
    -- Units beyond a total lowered meanwhile are not given back.
    UPDATE realtime.inventory i SET available = least(i.total, i.available + v_res.quantity)
    WHERE i.resource_id = v_res.resource_id
    RETURNING i.available INTO v_available;
    UPDATE realtime.reservations r SET status = 'released', released_at = now()
    WHERE r.id = v_res.id
    RETURNING r.* INTO v_res;
    PERFORM set_config('triptrip.reservation_writer', '', true);
    RETURN realtime.reservation_json(v_res) || jsonb_build_object('available', v_available);
END
$$;
COMMENT ON FUNCTION realtime.release(bigint, text) IS
    'Gives the units of a confirmed reservation back (at most up to the resource''s total) and '
    'returns the reservation as JSON. Releasing twice changes nothing the second time '
    '("already_released": true). With user_id, only that user''s reservation is found. No such '
    'reservation: SQLSTATE P0002; a rejected one: 22023.';

CREATE FUNCTION realtime.prune_reservation_keys() RETURNS bigint
LANGUAGE sql
AS $$
    WITH pruned AS (
        DELETE FROM realtime.reservation_keys WHERE created_at <= now() - interval '24 hours'
        RETURNING 1
    )
    SELECT count(*) FROM pruned
$$;
COMMENT ON FUNCTION realtime.prune_reservation_keys() IS
    'Deletes reservation idempotency keys older than 24 hours and returns how many; run it '
    'daily (each user''s own expired keys also go at their next reservation).';

-- ---------------------------------------------------------------------------------------------
-- Price alerts
-- ---------------------------------------------------------------------------------------------
CREATE TABLE realtime.price_alerts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          text        NOT NULL REFERENCES realtime.users ON DELETE CASCADE,
    resource_id      text        NOT NULL REFERENCES realtime.inventory ON DELETE CASCADE,
    below            numeric,
    percent_drop     numeric,
    reference_price  numeric     NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_notified_at timestamptz,
    CONSTRAINT price_alerts_one_threshold CHECK (num_nonnulls(below, percent_drop) = 1),
    CONSTRAINT price_alerts_below CHECK (below >= 0),
    CONSTRAINT price_alerts_percent_drop CHECK (percent_drop > 0 AND percent_drop < 100)
);
CREATE INDEX price_alerts_resource_idx ON realtime.price_alerts (resource_id);
CREATE INDEX price_alerts_user_idx ON realtime.price_alerts (user_id);
COMMENT ON TABLE realtime.price_alerts IS
    'Price alerts: when an UPDATE of realtime.inventory moves a resource''s price from above the '
    'alert''s threshold to at or below it, the user gets a price_alert notification '
    '(realtime.notify) in the same transaction; prices that stay below notify nothing more until '
    'they rise above and cross again. The user must be in realtime.users.';
COMMENT ON COLUMN realtime.price_alerts.below IS
    'Threshold as a price: notify when the price drops to this or less.';
COMMENT ON COLUMN realtime.price_alerts.percent_drop IS
    'Threshold as a drop (0-100, exclusive) from reference_price: notify when the price is at '
    'or below reference_price * (1 - percent_drop / 100).';
COMMENT ON COLUMN realtime.price_alerts.reference_price IS
    'The resource''s price when the alert was created (set by the insert trigger when omitted).';
COMMENT ON COLUMN realtime.price_alerts.last_notified_at IS 'When the alert last fired.';

CREATE FUNCTION realtime.price_alerts_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM realtime.users u WHERE u.user_id = NEW.user_id) THEN
        RAISE EXCEPTION 'realtime.price_alerts: unknown user %',
                coalesce(quote_literal(left(NEW.user_id, 80)), 'NULL')
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'realtime', TABLE = 'price_alerts',
                  HINT = 'Price alerts are notifications: add the user to realtime.users first.';
    END IF;
    IF NEW.reference_price IS NULL THEN
        SELECT i.price INTO NEW.reference_price
        FROM realtime.inventory i WHERE i.resource_id = NEW.resource_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'realtime.price_alerts: unknown resource %',
                    coalesce(quote_literal(left(NEW.resource_id, 80)), 'NULL')
                USING ERRCODE = 'foreign_key_violation', SCHEMA = 'realtime',
                      TABLE = 'price_alerts';
        END IF;
    END IF;
    IF num_nonnulls(NEW.below, NEW.percent_drop) <> 1 THEN
        RAISE EXCEPTION 'realtime.price_alerts: give exactly one of below and percent_drop'
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'price_alerts',
                  CONSTRAINT = 'price_alerts_one_threshold';
    END IF;
    IF NEW.percent_drop <= 0 OR NEW.percent_drop >= 100 THEN
        RAISE EXCEPTION 'realtime.price_alerts: percent_drop must be between 0 and 100 (exclusive), not %',
                NEW.percent_drop
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'price_alerts',
                  CONSTRAINT = 'price_alerts_percent_drop';
    END IF;
    IF NEW.below < 0 THEN
        RAISE EXCEPTION 'realtime.price_alerts: below must not be negative'
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'price_alerts',
                  CONSTRAINT = 'price_alerts_below';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER price_alerts_check BEFORE INSERT OR UPDATE ON realtime.price_alerts
    FOR EACH ROW EXECUTE FUNCTION realtime.price_alerts_check();

-- The threshold of an alert, as a price.
CREATE FUNCTION realtime.price_alert_threshold(a realtime.price_alerts) RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(a.below, trim_scale(round(a.reference_price * (1 - a.percent_drop / 100), 4)))
$$;
COMMENT ON FUNCTION realtime.price_alert_threshold(realtime.price_alerts) IS
    'The price at or below which an alert fires: below, or reference_price less percent_drop %.';

CREATE FUNCTION realtime.inventory_price_alerts() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a           realtime.price_alerts;
    v_threshold numeric;
BEGIN
    FOR a IN SELECT * FROM realtime.price_alerts p WHERE p.resource_id = NEW.resource_id
             ORDER BY p.id
    LOOP
        v_threshold := realtime.price_alert_threshold(a);
        CONTINUE WHEN NOT (OLD.price > v_threshold AND NEW.price <= v_threshold);
        PERFORM realtime.notify(
            a.user_id, 'price_alert',
            jsonb_build_object('item', NEW.name, 'resource_id', NEW.resource_id,
                               'price', NEW.price::text, 'previous_price', OLD.price::text,
                               'currency', NEW.currency, 'threshold', v_threshold::text,
                               'alert_id', a.id),
            'price_alert:' || a.id || ':' || NEW.price::text);
        UPDATE realtime.price_alerts p SET last_notified_at = now() WHERE p.id = a.id;
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION realtime.inventory_price_alerts() IS
    'AFTER UPDATE OF price trigger of realtime.inventory (on drops): creates a price_alert '
    'notification for each alert whose threshold the new price crossed (idempotency key '
    'price_alert:<alert id>:<price>, so one alert notifies a price at most once in 24 hours).';
CREATE TRIGGER inventory_price_alerts AFTER UPDATE OF price ON realtime.inventory
    FOR EACH ROW WHEN (NEW.price < OLD.price)
    EXECUTE FUNCTION realtime.inventory_price_alerts();

-- ---------------------------------------------------------------------------------------------
-- Bookings and the resolution of status conflicts
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION realtime.booking_status_rank(status text) RETURNS int
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE status WHEN 'pending' THEN 1 WHEN 'confirmed' THEN 2 WHEN 'cancelled' THEN 3 END
$$;
COMMENT ON FUNCTION realtime.booking_status_rank(text) IS
    'Precedence of booking statuses (seed §4.4): pending 1 < confirmed 2 < cancelled 3; NULL '
    'for anything else.';

CREATE TABLE realtime.bookings (
    booking_id  text        PRIMARY KEY,
    user_id     text        NOT NULL,
    resource_id text,
    status      text        NOT NULL DEFAULT 'pending',
    version     bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bookings_booking_id_format
        CHECK (length(booking_id) BETWEEN 1 AND 200 AND booking_id ~ '^[A-Za-z0-9_.:\-]+$'),
    CONSTRAINT bookings_user_id_length CHECK (length(user_id) BETWEEN 1 AND 200),
    CONSTRAINT bookings_status CHECK (status IN ('pending', 'confirmed', 'cancelled'))
);
CREATE INDEX bookings_user_idx ON realtime.bookings (user_id);
COMMENT ON TABLE realtime.bookings IS
    'Bookings and their status. Services INSERT them (status pending by default); the status '
    'then changes through realtime.set_booking_status() only, which resolves conflicts by '
    'precedence and records every request. Each change reaches the user''s connections as '
    'booking:status.';
COMMENT ON COLUMN realtime.bookings.status IS
    'pending < confirmed < cancelled: the more advanced status wins; admins can override.';
COMMENT ON COLUMN realtime.bookings.version IS 'Set by the trigger: 1, then +1 per update.';
COMMENT ON COLUMN realtime.bookings.resource_id IS 'The booked resource, if any (free text).';

CREATE TABLE realtime.booking_status_history (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id   text        NOT NULL,
    from_status  text        NOT NULL,
    requested    text        NOT NULL,
    result       text        NOT NULL,
    status_after text        NOT NULL,
    actor        text        NOT NULL,
    admin        boolean     NOT NULL,
    reason       text,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT booking_status_history_result
        CHECK (result IN ('applied', 'unchanged', 'rejected', 'overridden'))
);
CREATE INDEX booking_status_history_booking_idx
    ON realtime.booking_status_history (booking_id, id);
COMMENT ON TABLE realtime.booking_status_history IS
    'Every status request made through realtime.set_booking_status() and how it was resolved '
    '(seed §7.3), append-only; requests on one booking are serialized by its row lock, so id '
    'order is the order they were resolved in. Kept when the booking is deleted.';
COMMENT ON COLUMN realtime.booking_status_history.from_status IS
    'The status when the request was resolved.';
COMMENT ON COLUMN realtime.booking_status_history.requested IS 'The status asked for.';
COMMENT ON COLUMN realtime.booking_status_history.result IS
    'applied: a more advanced status, now current; unchanged: the status already was that; '
    'rejected: a less advanced status from a non-admin, refused; overridden: a less advanced '
    'status set by an admin.';
COMMENT ON COLUMN realtime.booking_status_history.status_after IS 'The status after the request.';
COMMENT ON COLUMN realtime.booking_status_history.actor IS 'Who asked (a user or service name).';
COMMENT ON COLUMN realtime.booking_status_history.at IS 'When the request was resolved.';

CREATE FUNCTION realtime.bookings_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF length(NEW.booking_id) NOT BETWEEN 1 AND 200 OR NEW.booking_id !~ '^[A-Za-z0-9_.:\-]+$' THEN
        RAISE EXCEPTION 'realtime.bookings: invalid booking_id %',
                quote_literal(left(NEW.booking_id, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'bookings',
                  CONSTRAINT = 'bookings_booking_id_format',
                  HINT = 'A booking_id is 1-200 characters from A-Z a-z 0-9 _ . : -';
    END IF;
    IF realtime.booking_status_rank(NEW.status) IS NULL AND NEW.status IS NOT NULL THEN
        RAISE EXCEPTION 'realtime.bookings: invalid status %', quote_literal(left(NEW.status, 80))
            USING ERRCODE = 'check_violation', SCHEMA = 'realtime', TABLE = 'bookings',
                  CONSTRAINT = 'bookings_status',
                  HINT = 'A booking status is pending, confirmed or cancelled.';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.booking_id IS DISTINCT FROM OLD.booking_id THEN
            RAISE EXCEPTION 'realtime.bookings: booking_id cannot change'
                USING ERRCODE = 'integrity_constraint_violation', SCHEMA = 'realtime',
                      TABLE = 'bookings';
        END IF;
        IF NEW.status IS DISTINCT FROM OLD.status
           AND current_setting('triptrip.booking_status_writer', true) IS DISTINCT FROM 'on' THEN
            RAISE EXCEPTION 'realtime.bookings: change a booking''s status with realtime.set_booking_status()'
                USING ERRCODE = 'insufficient_privilege', SCHEMA = 'realtime', TABLE = 'bookings',
                      HINT = 'SELECT realtime.set_booking_status(booking_id, status, actor, admin, reason): it applies the precedence rule and records the request.';
        END IF;
        NEW.version := OLD.version + 1;
    ELSE
        NEW.version := 1;
        NEW.created_at := now();
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION realtime.bookings_check() IS
    'BEFORE INSERT OR UPDATE trigger of realtime.bookings: validates booking_id and status, '
    'refuses status changes outside realtime.set_booking_status(), sets version and updated_at.';
CREATE TRIGGER bookings_check BEFORE INSERT OR UPDATE ON realtime.bookings
    FOR EACH ROW EXECUTE FUNCTION realtime.bookings_check();

CREATE FUNCTION realtime.set_booking_status(
    booking_id text,
    status     text,
    actor      text,
    admin      boolean DEFAULT false,
    reason     text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_booking realtime.bookings;
    v_from    text;
    v_result  text;
BEGIN
    IF realtime.booking_status_rank(set_booking_status.status) IS NULL THEN
        RAISE EXCEPTION 'realtime.set_booking_status: invalid status %',
                coalesce(quote_literal(left(set_booking_status.status, 80)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A booking status is pending, confirmed or cancelled.';
    END IF;
    IF set_booking_status.actor IS NULL OR length(set_booking_status.actor) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'realtime.set_booking_status: actor must be 1-200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF set_booking_status.admin IS NULL THEN
        RAISE EXCEPTION 'realtime.set_booking_status: admin must be true or false'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(set_booking_status.reason) > 1000 THEN
        RAISE EXCEPTION 'realtime.set_booking_status: reason is longer than 1000 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Concurrent requests for one booking are resolved one at a time, in lock order.
    SELECT b.* INTO v_booking FROM realtime.bookings b
    WHERE b.booking_id = set_booking_status.booking_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'realtime.set_booking_status: unknown booking %',
                coalesce(quote_literal(left(set_booking_status.booking_id, 80)), 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    v_from := v_booking.status;
    v_result := CASE
        WHEN set_booking_status.status = v_from THEN 'unchanged'
        WHEN realtime.booking_status_rank(set_booking_status.status)
             > realtime.booking_status_rank(v_from) THEN 'applied'
        WHEN set_booking_status.admin THEN 'overridden'
        ELSE 'rejected'
    END;
    IF v_result IN ('applied', 'overridden') THEN
        PERFORM set_config('triptrip.booking_status_writer', 'on', true);
        UPDATE realtime.bookings b SET status = set_booking_status.status
        WHERE b.booking_id = v_booking.booking_id
        RETURNING b.* INTO v_booking;
        PERFORM set_config('triptrip.booking_status_writer', '', true);
    END IF;
    INSERT INTO realtime.booking_status_history
        (booking_id, from_status, requested, result, status_after, actor, admin, reason)
    VALUES (v_booking.booking_id, v_from, set_booking_status.status, v_result, v_booking.status,
            set_booking_status.actor, set_booking_status.admin, set_booking_status.reason);
    RETURN jsonb_build_object('booking_id', v_booking.booking_id, 'status', v_booking.status,
                              'previous', v_from, 'requested', set_booking_status.status,
                              'result', v_result, 'version', v_booking.version);
END
$$;
COMMENT ON FUNCTION realtime.set_booking_status(text, text, text, boolean, text) IS
    'Asks for a booking status change and returns how it was resolved: {booking_id, status (now '
    'current), previous, requested, result, version}. The more advanced status wins (pending < '
    'confirmed < cancelled): a request for a less advanced one is rejected unless admin is true '
    '(overridden). Concurrent requests for one booking queue on its row lock. Every request, '
    'rejected ones included, is a row in realtime.booking_status_history. Unknown booking: '
    'SQLSTATE P0002; invalid status or actor: 22023.';

-- ---------------------------------------------------------------------------------------------
-- Streaming
-- ---------------------------------------------------------------------------------------------
ALTER PUBLICATION triptrip_realtime
    ADD TABLE realtime.inventory, realtime.reservations, realtime.bookings;
