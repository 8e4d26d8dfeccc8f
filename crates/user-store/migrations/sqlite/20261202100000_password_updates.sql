-- When the password was last changed, in Unix milliseconds: sessions the API started before it
-- are refused, even one whose revocation was missed. NULL until the first change.
ALTER TABLE users ADD COLUMN password_changed_at INTEGER;

-- One row per handled `user-password-update-request`, written in the update's transaction, so a
-- redelivered request gets the answer the first delivery got and is not applied twice.
CREATE TABLE user_password_updates (
    request_id          BLOB    PRIMARY KEY NOT NULL,
    email               TEXT    NOT NULL,
    request_digest      TEXT    NOT NULL,
    outcome             TEXT    NOT NULL CHECK (outcome IN ('updated', 'unknown_user')),
    user_id             BLOB    REFERENCES users (id),
    password_changed_at INTEGER,
    handled_at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK ((outcome = 'updated') = (user_id IS NOT NULL AND password_changed_at IS NOT NULL))
);
CREATE INDEX user_password_updates_handled_at ON user_password_updates (handled_at);
