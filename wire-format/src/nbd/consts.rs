//! Numbers of the NBD protocol, from `doc/proto.md` of NetworkBlockDevice/nbd.
//!
//! Names are the spec's with the `NBD_` prefix dropped (`NBD_OPT_GO` → [`OPT_GO`]).
//! Flag bits are numbered in network byte order, as in the spec.

// --- Magics ("Newstyle negotiation", "Transmission") ---

/// `NBDMAGIC`, first 8 bytes of the server greeting (the spec's `INIT_PASSWD`).
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second 8 bytes of the greeting and first 8 bytes of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic at the start of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC` (formerly `NBD_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC` (structured replies are not encoded by this crate).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// --- Handshake flags (16 bits, server → client) ---

/// Server supports the fixed newstyle protocol.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server will omit the 124 zero bytes after `OPT_EXPORT_NAME` if the client asks.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

// --- Client flags (32 bits, client → server) ---

/// Client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client asks for no 124 zero bytes after `OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag the spec defines; anything else MUST make the server hang up.
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// --- Transmission flags (16 bits, per export) ---

/// MUST always be set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Server supports `CMD_FLUSH`.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Server supports `CMD_FLAG_FUA`.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Export behaves like a rotational medium.
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// Server supports `CMD_TRIM`.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Server supports `CMD_WRITE_ZEROES`.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Server supports `CMD_FLAG_DF` (structured replies only).
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Writes on one connection are visible (and flushed) on all connections.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Server supports the experimental `CMD_RESIZE`.
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// Server supports `CMD_CACHE`.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// Server supports `CMD_FLAG_FAST_ZERO`.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// Experimental `BLOCK_STATUS_PAYLOAD` extension (extended headers only).
pub const FLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

// --- Option types (client → server) ---

/// Choose an export and enter transmission; cannot return errors.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Upgrade to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Ask about an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Like `OPT_INFO`, then enter transmission.
pub const OPT_GO: u32 = 7;
/// Negotiate structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Negotiate extended headers.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// --- Option reply types (server → client) ---

/// Option accepted / list finished.
pub const REP_ACK: u32 = 1;
/// One export in an `OPT_LIST` answer.
pub const REP_SERVER: u32 = 2;
/// One `INFO_*` item in an `OPT_INFO`/`OPT_GO` answer.
pub const REP_INFO: u32 = 3;
/// One metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply type.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option not supported.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Forbidden by server policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Syntactically or semantically invalid option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Not supported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// TLS required first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Export requires the client to honour `INFO_BLOCK_SIZE`.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Request too big.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
/// Extended headers required.
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR | 10;

// --- Info types (in `REP_INFO` and `OPT_INFO`/`OPT_GO` requests) ---

/// Size and transmission flags (mandatory before a successful `REP_ACK`).
pub const INFO_EXPORT: u16 = 0;
/// Canonical export name.
pub const INFO_NAME: u16 = 1;
/// Human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Minimum / preferred / maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

// --- Command types (transmission) ---

/// Read.
pub const CMD_READ: u16 = 0;
/// Write (data follows the request).
pub const CMD_WRITE: u16 = 1;
/// Disconnect (no reply).
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Trim / discard.
pub const CMD_TRIM: u16 = 4;
/// Prefetch into cache.
pub const CMD_CACHE: u16 = 5;
/// Write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Block status (structured replies only).
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Experimental resize.
pub const CMD_RESIZE: u16 = 8;

// --- Command flags ---

/// Force unit access: durable before the reply.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// `CMD_WRITE_ZEROES`: do not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// `CMD_READ`: do not fragment the structured reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// `CMD_BLOCK_STATUS`: one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// `CMD_WRITE_ZEROES`: fail fast instead of writing slowly.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Experimental extended-header payload length flag.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// --- Error values in replies ("Error values"); not necessarily the host's errno ---

/// NBD error value, the `error` field of a reply (0 = success).
pub type NbdErrno = u32;
/// Operation not permitted.
pub const EPERM: NbdErrno = 1;
/// Input/output error.
pub const EIO: NbdErrno = 5;
/// Cannot allocate memory.
pub const ENOMEM: NbdErrno = 12;
/// Invalid argument.
pub const EINVAL: NbdErrno = 22;
/// No space left on device.
pub const ENOSPC: NbdErrno = 28;
/// Value too large.
pub const EOVERFLOW: NbdErrno = 75;
/// Operation not supported.
pub const ENOTSUP: NbdErrno = 95;
/// Server is shutting down.
pub const ESHUTDOWN: NbdErrno = 108;
