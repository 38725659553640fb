//! A small blocking NBD client (fixed newstyle, NBD_OPT_GO, simple replies, one request at a
//! time). The demo's workload and the tests' hand-made requests use it; it is not a
//! replacement for qemu-img or libnbd.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use wire_format::nbd::{self, Command, Info, Request};

pub struct NbdClient {
    stream: UnixStream,
    pub size: u64,
    pub min_block: u32,
    pub flags: u16,
    cookie: u64,
}

/// An error the server answered (the connection is still usable).
#[derive(Debug, thiserror::Error)]
#[error("NBD server answered error {errno}")]
pub struct NbdErrorReply {
    pub errno: u32,
}

impl NbdClient {
    pub fn connect_unix(path: &Path, export: &str) -> Result<NbdClient> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        let mut c = NbdClient {
            stream,
            size: 0,
            min_block: 1,
            flags: 0,
            cookie: 1,
        };
        c.handshake(export)?;
        Ok(c)
    }

    fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.stream.read_exact(&mut v)?;
        Ok(v)
    }

    fn handshake(&mut self, export: &str) -> Result<()> {
        let mut g = [0u8; nbd::GREETING_LEN];
        self.stream.read_exact(&mut g)?;
        nbd::decode_server_greeting(&g)?;
        self.stream.write_all(&nbd::encode_client_flags(
            nbd::FLAG_C_FIXED_NEWSTYLE | nbd::FLAG_C_NO_ZEROES,
        ))?;
        let mut out = Vec::new();
        nbd::encode_option(
            nbd::OPT_GO,
            &nbd::encode_info_request(export, &[nbd::INFO_BLOCK_SIZE]),
            &mut out,
        );
        self.stream.write_all(&out)?;
        loop {
            let mut hb = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
            self.stream.read_exact(&mut hb)?;
            let h = nbd::decode_option_reply_header(&hb)?;
            let data = self.read_exact(h.len as usize)?;
            if h.is_error() {
                bail!(
                    "server refused NBD_OPT_GO ({:#x}): {}",
                    h.reply_type,
                    String::from_utf8_lossy(&data)
                );
            }
            match h.reply_type {
                nbd::REP_ACK => return Ok(()),
                nbd::REP_INFO => match nbd::decode_info(&data)? {
                    Info::Export { size, flags } => {
                        self.size = size;
                        self.flags = flags;
                    }
                    Info::BlockSize { min, .. } => self.min_block = min,
                    _ => {}
                },
                other => bail!("unexpected option reply type {other}"),
            }
        }
    }

    fn request(
        &mut self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<u64> {
        let cookie = self.cookie;
        self.cookie += 1;
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.stream.write_all(&nbd::encode_request(&req))?;
        if !payload.is_empty() {
            self.stream.write_all(payload)?;
        }
        Ok(cookie)
    }

    fn reply(&mut self, cookie: u64) -> Result<()> {
        let mut rb = [0u8; nbd::SIMPLE_REPLY_LEN];
        self.stream.read_exact(&mut rb)?;
        let (errno, got) = nbd::decode_simple_reply(&rb)?;
        if got != cookie {
            bail!("reply for cookie {got}, expected {cookie}");
        }
        if errno != 0 {
            return Err(anyhow!(NbdErrorReply { errno }));
        }
        Ok(())
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cookie = self.request(Command::Read, 0, offset, buf.len() as u32, &[])?;
        self.reply(cookie)?;
        self.stream.read_exact(buf)?;
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        let flags = if fua { nbd::CMD_FLAG_FUA } else { 0 };
        let cookie = self.request(Command::Write, flags, offset, data.len() as u32, data)?;
        self.reply(cookie)
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u32) -> Result<()> {
        let cookie = self.request(Command::WriteZeroes, 0, offset, len, &[])?;
        self.reply(cookie)
    }

    pub fn trim(&mut self, offset: u64, len: u32) -> Result<()> {
        let cookie = self.request(Command::Trim, 0, offset, len, &[])?;
        self.reply(cookie)
    }

    pub fn flush(&mut self) -> Result<()> {
        let cookie = self.request(Command::Flush, 0, 0, 0, &[])?;
        self.reply(cookie)
    }

    /// Sends a raw request header (for tests of bad input) and returns the reply's errno.
    pub fn raw(
        &mut self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<u32> {
        let cookie = self.request(command, flags, offset, length, payload)?;
        match self.reply(cookie) {
            Ok(()) => Ok(0),
            Err(e) => match e.downcast_ref::<NbdErrorReply>() {
                Some(r) => Ok(r.errno),
                None => Err(e),
            },
        }
    }

    pub fn disconnect(mut self) -> Result<()> {
        self.request(Command::Disc, 0, 0, 0, &[])?;
        Ok(())
    }
}
