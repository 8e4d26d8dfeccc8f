-- One row per mail request the mailer has handed to SMTP, written before its offset is
-- committed, so a redelivered request is recognised and not sent twice.
CREATE TABLE sent_mail (
    request_id uuid        PRIMARY KEY,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sent_mail_sent_at ON sent_mail (sent_at);

-- Both kinds of request records are pruned by age, oldest first, in small batches.
CREATE INDEX user_creation_requests_handled_at ON user_creation_requests (handled_at);
