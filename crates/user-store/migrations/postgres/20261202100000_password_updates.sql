-- When the password was last changed: sessions the API started before it are refused, even one
-- whose revocation was missed. NULL until the first change.
ALTER TABLE users ADD COLUMN password_changed_at timestamptz;

-- One row per handled `user-password-update-request`, written in the update's transaction, so a
-- redelivered request gets the answer the first delivery got and is not applied twice.
CREATE TABLE user_password_updates (
    request_id          uuid        PRIMARY KEY,
    email               text        NOT NULL,
    -- The keyed digest of the email and the new password (computed by the API): a retry under
    -- the same request id with another password is refused.
    request_digest      text        NOT NULL,
    outcome             text        NOT NULL CHECK (outcome IN ('updated', 'unknown_user')),
    user_id             uuid        REFERENCES users (id),
    password_changed_at timestamptz,
    handled_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'updated') = (user_id IS NOT NULL AND password_changed_at IS NOT NULL))
);
CREATE INDEX user_password_updates_handled_at ON user_password_updates (handled_at);
