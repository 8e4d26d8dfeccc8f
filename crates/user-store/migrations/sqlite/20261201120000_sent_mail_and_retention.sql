-- One row per mail request handed to SMTP, so a mail request seen again is not sent twice.
CREATE TABLE sent_mail (
    request_id BLOB PRIMARY KEY NOT NULL,
    sent_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX sent_mail_sent_at ON sent_mail (sent_at);

-- Both kinds of request records are pruned by age, oldest first, in small batches.
CREATE INDEX user_creation_requests_handled_at ON user_creation_requests (handled_at);
