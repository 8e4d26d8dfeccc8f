//! A real SMTP server for tests: it speaks enough of RFC 5321 for lettre (EHLO/HELO, MAIL FROM,
//! RCPT TO, DATA with dot-unstuffing, RSET, NOOP, QUIT) and keeps every message it accepted.
//!
//! It can be stopped and started again on the same port, to test a mailer that retries while
//! SMTP is down, and told to refuse recipients with a given reply code, to test what a mailer
//! does with transient (4xx) and permanent (5xx) failures.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Longest command or data line accepted (RFC 5321 allows 1000 octets for text lines; be generous).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest message accepted.
const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// One message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`), without angle brackets.
    pub from: String,
    /// The envelope recipients (`RCPT TO`), without angle brackets.
    pub recipients: Vec<String>,
    /// The message as sent after DATA, dot-unstuffed, without the terminating `.` line.
    pub data: String,
}

impl ReceivedMail {
    /// The value of the first top-level header called `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = split_head_body(&self.data);
        find_header(head, name)
    }

    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The body after the header block, transfer-decoded (quoted-printable), line ends `\n`.
    /// For a multipart message this is the raw multipart body; see [`ReceivedMail::text`].
    pub fn body(&self) -> String {
        let (head, body) = split_head_body(&self.data);
        decode_body(head, body)
    }

    /// The `text/plain` content: the body itself for a single-part message, the first
    /// `text/plain` part of a multipart one.
    pub fn text(&self) -> String {
        let (head, body) = split_head_body(&self.data);
        text_part(head, body).unwrap_or_else(|| decode_body(head, body))
    }

    /// Whether `address` is among the envelope recipients.
    pub fn is_to(&self, address: &str) -> bool {
        self.recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(address))
    }
}

fn split_head_body(data: &str) -> (&str, &str) {
    data.split_once("\r\n\r\n")
        .or_else(|| data.split_once("\n\n"))
        .unwrap_or((data, ""))
}

fn find_header(head: &str, name: &str) -> Option<String> {
    let mut unfolded: Vec<String> = Vec::new();
    for line in head.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push(' ');
                last.push_str(line.trim_start());
            }
        } else {
            unfolded.push(line.to_owned());
        }
    }
    unfolded.into_iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

fn decode_body(head: &str, body: &str) -> String {
    let body = body.replace("\r\n", "\n");
    let quoted_printable = find_header(head, "Content-Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("quoted-printable"));
    if quoted_printable {
        decode_quoted_printable(&body)
    } else {
        body
    }
}

/// The decoded first `text/plain` part of a multipart entity, searching nested multiparts.
fn text_part(head: &str, body: &str) -> Option<String> {
    let content_type = find_header(head, "Content-Type")?;
    if !content_type.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    let boundary = content_type.split(';').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        key.eq_ignore_ascii_case("boundary")
            .then(|| value.trim_matches('"').to_owned())
    })?;
    let delimiter = format!("--{boundary}");
    body.split(delimiter.as_str())
        .skip(1)
        .take_while(|part| !part.starts_with("--"))
        .find_map(|part| {
            let part = part.trim_start_matches(['\r', '\n']);
            let (part_head, part_body) = split_head_body(part);
            let part_body = part_body.trim_end_matches(['\r', '\n']);
            let part_type = find_header(part_head, "Content-Type")
                .unwrap_or_else(|| "text/plain".to_owned())
                .to_ascii_lowercase();
            if part_type.starts_with("text/plain") {
                Some(decode_body(part_head, part_body))
            } else {
                text_part(part_head, part_body)
            }
        })
}

fn decode_quoted_printable(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let input = text.as_bytes();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'=' if input.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' if input.len() >= i + 3 => {
                let hex = std::str::from_utf8(&input[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        bytes.push(byte);
                        i += 3;
                    }
                    None => {
                        bytes.push(b'=');
                        i += 1;
                    }
                }
            }
            byte => {
                bytes.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

struct Shared {
    messages: watch::Sender<Vec<ReceivedMail>>,
    /// 0 = accept recipients; otherwise the reply code RCPT TO gets.
    reject_recipients_with: AtomicU16,
    /// How long the server takes to accept a message after its data, in milliseconds.
    accept_delay_ms: AtomicU64,
    connections: AtomicUsize,
    /// Messages whose data has arrived, accepted yet or not.
    data_received: AtomicUsize,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The capture server. Messages are kept across stop/start.
pub struct SmtpCapture {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl std::fmt::Debug for SmtpCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpCapture")
            .field("addr", &self.addr)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl SmtpCapture {
    /// Starts a server on `127.0.0.1` with a port of its own.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            messages: watch::Sender::new(Vec::new()),
            reject_recipients_with: AtomicU16::new(0),
            accept_delay_ms: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            data_received: AtomicUsize::new(0),
        });
        let mut capture = Self {
            addr,
            shared,
            running: None,
        };
        capture.serve(listener);
        Ok(capture)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A lettre SMTP URL for this server (plain SMTP, no TLS, no authentication).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Every message accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.messages.borrow().clone()
    }

    /// How many messages were accepted so far, without copying them.
    pub fn message_count(&self) -> usize {
        self.shared.messages.borrow().len()
    }

    /// How many SMTP connections were accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// From now on answer every `RCPT TO` with `code` (e.g. 550 for a permanent, 451 for a
    /// transient failure); `None` accepts recipients again.
    pub fn reject_recipients_with(&self, code: Option<u16>) {
        self.shared
            .reject_recipients_with
            .store(code.unwrap_or(0), Ordering::Relaxed);
    }

    /// How many messages' data has arrived so far, whether or not they were accepted yet: with
    /// an accept delay, tells a test that a client is waiting for its message to be accepted.
    pub fn data_received(&self) -> usize {
        self.shared.data_received.load(Ordering::Relaxed)
    }

    /// From now on take `delay` to accept each message after its data, like a slow or
    /// overloaded server (`Duration::ZERO`: at once).
    pub fn set_accept_delay(&self, delay: Duration) {
        self.shared.accept_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Waits until a message matching `predicate` has arrived (possibly already) and returns
    /// it, or `None` when `timeout` passes first. Wakes on every new message; never sleeps.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&ReceivedMail) -> bool,
        timeout: Duration,
    ) -> Option<ReceivedMail> {
        let mut receiver = self.shared.messages.subscribe();
        let arrived = tokio::time::timeout(
            timeout,
            receiver.wait_for(|messages| messages.iter().any(&predicate)),
        )
        .await;
        match arrived {
            Ok(Ok(messages)) => messages.iter().find(|m| predicate(m)).cloned(),
            _ => None,
        }
    }

    /// Stops listening and closes every open connection. Returns once the port is free.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// Starts listening again on the same address after [`SmtpCapture::stop`].
    pub async fn restart(&mut self) -> io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        // tokio sets SO_REUSEADDR on listeners, so connections of the previous run lingering
        // in TIME_WAIT do not block the port.
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, self.shared.clone(), stop.clone()));
        self.running = Some(Running { stop, task });
    }
}

impl Drop for SmtpCapture {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            running.task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    sessions.spawn(session(stream, shared.clone()));
                }
            }
            // Reap finished sessions so the set does not grow without bound.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    sessions.shutdown().await;
}

#[derive(Default)]
struct Transaction {
    from: Option<String>,
    recipients: Vec<String>,
}

/// The path inside `<…>` after `FROM:`/`TO:`, ignoring ESMTP parameters.
fn path_argument(argument: &str) -> Option<String> {
    let (_, rest) = argument.split_once(':')?;
    let rest = rest.trim_start();
    let path = match rest.strip_prefix('<') {
        Some(inner) => inner.split_once('>')?.0,
        None => rest.split_whitespace().next().unwrap_or(""),
    };
    Some(path.to_owned())
}

async fn session(stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    writer
        .write_all(b"220 broker-auth-testkit ESMTP capture ready\r\n")
        .await?;
    let mut transaction = Transaction::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, argument) = text.split_once(' ').unwrap_or((text, ""));
        let reply: &[u8] = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                b"250-broker-auth-testkit\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
            }
            "HELO" => b"250 broker-auth-testkit\r\n",
            "MAIL" => match path_argument(argument) {
                Some(from) => {
                    transaction = Transaction {
                        from: Some(from),
                        recipients: Vec::new(),
                    };
                    b"250 2.1.0 OK\r\n"
                }
                None => b"501 5.5.4 syntax: MAIL FROM:<address>\r\n",
            },
            "RCPT" => {
                let rejection = shared.reject_recipients_with.load(Ordering::Relaxed);
                if transaction.from.is_none() {
                    b"503 5.5.1 MAIL first\r\n"
                } else if rejection != 0 {
                    let reply = format!("{rejection} recipient refused by the test\r\n");
                    writer.write_all(reply.as_bytes()).await?;
                    continue;
                } else {
                    match path_argument(argument) {
                        Some(to) => {
                            transaction.recipients.push(to);
                            b"250 2.1.5 OK\r\n"
                        }
                        None => b"501 5.5.4 syntax: RCPT TO:<address>\r\n",
                    }
                }
            }
            "DATA" => {
                if transaction.recipients.is_empty() {
                    b"503 5.5.1 RCPT first\r\n"
                } else {
                    writer
                        .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let Some(data) = read_data(&mut reader).await? else {
                        writer.write_all(b"552 5.3.4 message too big\r\n").await?;
                        transaction = Transaction::default();
                        continue;
                    };
                    shared.data_received.fetch_add(1, Ordering::Relaxed);
                    let delay = shared.accept_delay_ms.load(Ordering::Relaxed);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let mail = ReceivedMail {
                        from: transaction.from.take().unwrap_or_default(),
                        recipients: std::mem::take(&mut transaction.recipients),
                        data,
                    };
                    shared.messages.send_modify(|messages| messages.push(mail));
                    b"250 2.0.0 OK queued\r\n"
                }
            }
            "RSET" => {
                transaction = Transaction::default();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                writer.write_all(b"221 2.0.0 bye\r\n").await?;
                return writer.shutdown().await;
            }
            _ => b"502 5.5.2 command not recognized\r\n",
        };
        writer.write_all(reply).await?;
    }
}

/// Reads DATA lines up to the lone `.`, undoing dot-stuffing. `None` when the message is larger
/// than [`MAX_MESSAGE_BYTES`] (the rest is still read, so the session stays in sync).
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> io::Result<Option<String>> {
    let mut data = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut *reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during DATA",
            ));
        }
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let unstuffed = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        if data.len() + unstuffed.len() > MAX_MESSAGE_BYTES {
            too_big = true;
        } else {
            data.extend_from_slice(unstuffed);
        }
    }
    if too_big {
        return Ok(None);
    }
    // Drop the line end that belongs to the terminating sequence, not to the message.
    if data.ends_with(b"\r\n") {
        data.truncate(data.len() - 2);
    }
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn converse(addr: SocketAddr, script: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(script.as_bytes()).await.unwrap();
        let mut transcript = String::new();
        stream.read_to_string(&mut transcript).await.unwrap();
        transcript
    }

    #[tokio::test]
    async fn a_message_is_captured_with_dots_unstuffed() {
        let capture = SmtpCapture::start().await.unwrap();
        let transcript = converse(
            capture.addr(),
            "EHLO me\r\nMAIL FROM:<from@example.com> BODY=8BITMIME\r\nRCPT TO:<to@example.com>\r\n\
             DATA\r\nSubject: Hello\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
             line one=\r\n continues\r\n..starts with a dot\r\ncaf=C3=A9\r\n.\r\nNOOP\r\nQUIT\r\n",
        )
        .await;
        assert!(transcript.contains("250 2.0.0 OK queued"), "{transcript}");
        assert!(transcript.ends_with("221 2.0.0 bye\r\n"), "{transcript}");
        let mail = capture
            .wait_for(|m| m.is_to("to@example.com"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(mail.from, "from@example.com");
        assert_eq!(mail.subject().as_deref(), Some("Hello"));
        assert_eq!(mail.body(), "line one continues\n.starts with a dot\ncafé");
        assert_eq!(mail.text(), mail.body());
    }

    #[test]
    fn the_text_part_of_a_multipart_message_is_found() {
        let mail = ReceivedMail {
            from: "a@b.c".into(),
            recipients: vec!["d@e.f".into()],
            data:
                "Subject: Hi\r\nContent-Type: multipart/alternative;\r\n boundary=\"XyZ\"\r\n\r\n\
                   --XyZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe code is 012345\r\n\
                   --XyZ\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--XyZ--\r\n"
                    .into(),
        };
        assert_eq!(mail.text(), "the code is 012345");
    }

    #[tokio::test]
    async fn commands_out_of_order_are_refused_and_rset_clears_the_envelope() {
        let capture = SmtpCapture::start().await.unwrap();
        let transcript = converse(
            capture.addr(),
            "HELO me\r\nRCPT TO:<a@b.c>\r\nDATA\r\nMAIL FROM:<x@y.z>\r\nRCPT TO:<a@b.c>\r\nRSET\r\nDATA\r\nBOGUS\r\nQUIT\r\n",
        )
        .await;
        let codes: Vec<&str> = transcript.lines().map(|l| &l[..3]).collect();
        assert_eq!(
            codes,
            [
                "220", "250", "503", "503", "250", "250", "250", "503", "502", "221"
            ]
        );
        assert!(capture.messages().is_empty());
    }

    #[tokio::test]
    async fn recipients_can_be_refused_with_a_chosen_code() {
        let capture = SmtpCapture::start().await.unwrap();
        capture.reject_recipients_with(Some(550));
        let transcript = converse(
            capture.addr(),
            "HELO me\r\nMAIL FROM:<x@y.z>\r\nRCPT TO:<a@b.c>\r\nQUIT\r\n",
        )
        .await;
        assert!(transcript.contains("\r\n550 "), "{transcript}");
    }

    #[tokio::test]
    async fn it_stops_and_comes_back_on_the_same_port_keeping_messages() {
        let mut capture = SmtpCapture::start().await.unwrap();
        let addr = capture.addr();
        converse(
            addr,
            "HELO me\r\nMAIL FROM:<x@y.z>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nSubject: 1\r\n\r\nx\r\n.\r\nQUIT\r\n",
        )
        .await;
        // An idle connection must be closed by stop, like a real server going away.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        capture.stop().await;
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest).await;
        assert!(TcpStream::connect(addr).await.is_err());

        capture.restart().await.unwrap();
        assert_eq!(capture.addr(), addr);
        converse(
            addr,
            "HELO me\r\nMAIL FROM:<x@y.z>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nSubject: 2\r\n\r\ny\r\n.\r\nQUIT\r\n",
        )
        .await;
        let second = capture
            .wait_for(
                |m| m.subject().as_deref() == Some("2"),
                Duration::from_secs(5),
            )
            .await;
        assert!(second.is_some());
        assert_eq!(capture.messages().len(), 2);
    }

    #[tokio::test]
    async fn waiting_for_a_message_that_never_comes_times_out() {
        let capture = SmtpCapture::start().await.unwrap();
        let none = capture.wait_for(|_| true, Duration::from_millis(50)).await;
        assert!(none.is_none());
    }
}
