-- Users of the broker. `email` is stored normalized (trimmed, lowercased) by the caller, so a
-- plain unique constraint is the uniqueness rule.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL,
    name          text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- One row per handled `user-creation-request`, written in the user's transaction, so a
-- redelivered request gets the answer the first delivery got.
CREATE TABLE user_creation_requests (
    request_id uuid        PRIMARY KEY,
    email      text        NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('created', 'already_exists')),
    user_id    uuid        REFERENCES users (id),
    handled_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'created') = (user_id IS NOT NULL))
);
