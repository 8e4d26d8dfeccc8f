-- Users of the broker (embedded mode). `email` is stored normalized by the caller, so a plain
-- unique constraint is the uniqueness rule. UUIDs are stored as their 16 bytes (sqlx's encoding).
CREATE TABLE users (
    id            BLOB    PRIMARY KEY NOT NULL,
    email         TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- One row per handled `user-creation-request`, written in the user's transaction, so a
-- redelivered request gets the answer the first delivery got.
CREATE TABLE user_creation_requests (
    request_id BLOB PRIMARY KEY NOT NULL,
    email      TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('created', 'already_exists')),
    user_id    BLOB REFERENCES users (id),
    handled_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((outcome = 'created') = (user_id IS NOT NULL))
);
