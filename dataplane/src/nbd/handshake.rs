//! Fixed newstyle handshake, server side.

use wire_format::nbd;

use super::input::Input;
use super::{NbdConnError, MAX_REQUEST_BYTES, PREFERRED_BLOCK_BYTES};
use crate::frontend::volume::Volume;
use crate::runtime::Stream;

/// Options a client may send before we give up on it (a loop of bad options is not a session).
const OPTIONS_MAX: usize = 64;

pub fn transmission_flags() -> u16 {
    nbd::FLAG_HAS_FLAGS
        | nbd::FLAG_SEND_FLUSH
        | nbd::FLAG_SEND_FUA
        | nbd::FLAG_SEND_TRIM
        | nbd::FLAG_SEND_WRITE_ZEROES
        | nbd::FLAG_CAN_MULTI_CONN
}

async fn send(stream: &Stream, out: Vec<u8>) -> Result<(), NbdConnError> {
    let len = out.len();
    let (res, _) = stream.send_all(out, 0..len).await;
    Ok(res?)
}

fn reply(option: u32, reply_type: u32, data: &[u8], out: &mut Vec<u8>) {
    nbd::encode_option_reply(option, reply_type, data, out);
}

fn error_reply(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    reply(option, reply_type, message.as_bytes(), &mut out);
    out
}

/// Runs the handshake. `Some(no_zeroes)` when the client moved to transmission, `None` when
/// it ended the session (ABORT) cleanly.
pub async fn run(
    stream: &Stream,
    input: &mut Input,
    vol: &Volume,
) -> Result<Option<bool>, NbdConnError> {
    let flags = nbd::FLAG_FIXED_NEWSTYLE | nbd::FLAG_NO_ZEROES;
    send(stream, nbd::encode_server_greeting(flags).to_vec()).await?;
    let mut cflags = [0u8; 4];
    input.read_exact(&mut cflags).await?;
    let client_flags = nbd::decode_client_flags(&cflags)?;
    if client_flags & nbd::FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(NbdConnError::Refused(
            "client does not support fixed newstyle".into(),
        ));
    }
    let no_zeroes = client_flags & nbd::FLAG_C_NO_ZEROES != 0;
    for _ in 0..OPTIONS_MAX {
        let mut hb = [0u8; nbd::OPTION_HEADER_LEN];
        input.read_exact(&mut hb).await?;
        let h = match nbd::decode_option_header(&hb) {
            Ok(h) => h,
            Err(e) => {
                // A wrong IHAVEOPT magic, or an option longer than any we accept: the stream
                // can no longer be trusted.
                return Err(e.into());
            }
        };
        let mut data = vec![0u8; h.len as usize];
        input.read_exact(&mut data).await?;
        let opt = h.option;
        match opt {
            nbd::OPT_EXPORT_NAME => {
                let name = nbd::decode_export_name(&data)?;
                if !name_matches(name, vol) {
                    // EXPORT_NAME has no error reply: the spec says to close.
                    return Err(NbdConnError::Refused(format!("unknown export {name:?}")));
                }
                let mut out = Vec::new();
                nbd::encode_export_name_reply(
                    vol.geo.volume_size_bytes,
                    transmission_flags(),
                    no_zeroes,
                    &mut out,
                );
                send(stream, out).await?;
                return Ok(Some(no_zeroes));
            }
            nbd::OPT_ABORT => {
                let mut out = Vec::new();
                reply(opt, nbd::REP_ACK, &[], &mut out);
                let _ = send(stream, out).await;
                return Ok(None);
            }
            nbd::OPT_LIST => {
                let out = if data.is_empty() {
                    let mut out = Vec::new();
                    reply(
                        opt,
                        nbd::REP_SERVER,
                        &nbd::encode_rep_server(&vol.name),
                        &mut out,
                    );
                    reply(opt, nbd::REP_ACK, &[], &mut out);
                    out
                } else {
                    error_reply(opt, nbd::REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
                };
                send(stream, out).await?;
            }
            nbd::OPT_INFO | nbd::OPT_GO => {
                let req = match nbd::decode_info_request(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        send(
                            stream,
                            error_reply(opt, nbd::REP_ERR_INVALID, &e.to_string()),
                        )
                        .await?;
                        continue;
                    }
                };
                if !name_matches(req.name, vol) {
                    let msg = format!("no export named {:?}", req.name);
                    send(stream, error_reply(opt, nbd::REP_ERR_UNKNOWN, &msg)).await?;
                    continue;
                }
                let mut out = Vec::new();
                reply(
                    opt,
                    nbd::REP_INFO,
                    &nbd::encode_info_export(vol.geo.volume_size_bytes, transmission_flags()),
                    &mut out,
                );
                // Always sent: our minimum is the target's O_DIRECT granule, which clients
                // must respect (spec: a server MAY send it unrequested).
                let bs = nbd::encode_info_block_size(
                    vol.min_block,
                    PREFERRED_BLOCK_BYTES.max(vol.min_block),
                    MAX_REQUEST_BYTES,
                );
                reply(opt, nbd::REP_INFO, &bs, &mut out);
                if req.info.contains(&nbd::INFO_NAME) {
                    reply(
                        opt,
                        nbd::REP_INFO,
                        &nbd::encode_info_name(&vol.name),
                        &mut out,
                    );
                }
                if req.info.contains(&nbd::INFO_DESCRIPTION) {
                    let d = nbd::encode_info_description("ferry live-migrating volume");
                    reply(opt, nbd::REP_INFO, &d, &mut out);
                }
                reply(opt, nbd::REP_ACK, &[], &mut out);
                send(stream, out).await?;
                if opt == nbd::OPT_GO {
                    return Ok(Some(no_zeroes));
                }
            }
            nbd::OPT_STARTTLS => {
                send(
                    stream,
                    error_reply(
                        opt,
                        nbd::REP_ERR_POLICY,
                        "TLS is not offered on this export",
                    ),
                )
                .await?;
            }
            _ => {
                send(
                    stream,
                    error_reply(opt, nbd::REP_ERR_UNSUP, "option not supported"),
                )
                .await?;
            }
        }
    }
    Err(NbdConnError::Refused(format!(
        "more than {OPTIONS_MAX} options"
    )))
}

fn name_matches(name: &str, vol: &Volume) -> bool {
    name.is_empty() || name == vol.name
}
