-- The digest of what a creation request asked for (email, name, password; keyed, computed by the
-- API), so a retry under the same request id with other content is refused instead of being
-- answered with the first request's outcome. NULL for requests recorded before it existed.
ALTER TABLE user_creation_requests ADD COLUMN request_digest TEXT;
