//! How command bytes reach the TPM: the kernel's resource manager device, or swtpm over TCP or a
//! Unix socket. All speak raw TPM 2.0 command/response bytes with no extra framing.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::time::Duration;

use super::error::TpmError;
use super::wire::{HEADER_LEN, MAX_RESPONSE};
use crate::error::Invalid;

/// Sends one command and returns the raw response bytes (framing is checked by the caller).
pub trait Transport: Send {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError>;
    /// Human-readable address, for messages.
    fn address(&self) -> String;
    /// Whether the TPM behind this transport may need TPM2_Startup (a simulator); the kernel
    /// device is always started by the firmware/kernel.
    fn is_simulator(&self) -> bool {
        false
    }
}

/// The kernel's TPM resource manager: where the TPM is unless told otherwise.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

/// Where the TPM is: a device path, `tcp://HOST:PORT` or `unix:///PATH` (swtpm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Device(String),
    /// `HOST:PORT`.
    Tcp(String),
    /// An absolute socket path.
    Unix(String),
}

impl Default for Address {
    fn default() -> Self {
        Address::Device(DEFAULT_DEVICE.to_string())
    }
}

impl FromStr for Address {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        let invalid = |message: String| {
            Invalid::new(message, "use /dev/tpmrm0, tcp://HOST:PORT or unix:///PATH")
        };
        if let Some(hp) = s.strip_prefix("tcp://") {
            let (host, port) = hp
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("`{s}` has no port")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid(format!("`{s}` is not tcp://HOST:PORT")));
            }
            Ok(Address::Tcp(hp.to_string()))
        } else if let Some(p) = s.strip_prefix("unix://") {
            if !p.starts_with('/') {
                return Err(invalid(format!("`{s}` is not unix:///ABSOLUTE/PATH")));
            }
            Ok(Address::Unix(p.to_string()))
        } else if s.starts_with('/') {
            Ok(Address::Device(s.to_string()))
        } else {
            Err(invalid(format!("`{s}` is not a TPM address")))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Device(path) => f.write_str(path),
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
            Address::Unix(path) => write!(f, "unix://{path}"),
        }
    }
}

/// Opens the transport to `address`.
pub fn open(address: &Address) -> Result<Box<dyn Transport>, TpmError> {
    let no_device = |source| TpmError::NoDevice {
        address: address.to_string(),
        source,
    };
    match address.clone() {
        Address::Device(path) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(no_device)?;
            Ok(Box::new(DeviceTransport { file, path }))
        }
        Address::Tcp(hp) => {
            let stream = TcpStream::connect(&hp).map_err(no_device)?;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            Ok(Box::new(StreamTransport {
                stream,
                address: address.to_string(),
            }))
        }
        Address::Unix(path) => {
            let stream = UnixStream::connect(&path).map_err(no_device)?;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            Ok(Box::new(StreamTransport {
                stream,
                address: address.to_string(),
            }))
        }
    }
}

/// `/dev/tpmrm0`: one write per command, one read returns the whole response.
struct DeviceTransport {
    file: File,
    path: String,
}

impl Transport for DeviceTransport {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let io = |op, source| TpmError::Io {
            address: self.path.clone(),
            op,
            source,
        };
        self.file
            .write_all(command)
            .map_err(|e| io("sending a command", e))?;
        let mut buf = vec![0u8; MAX_RESPONSE];
        let n = self
            .file
            .read(&mut buf)
            .map_err(|e| io("reading a response", e))?;
        buf.truncate(n);
        Ok(buf)
    }
    fn address(&self) -> String {
        self.path.clone()
    }
}

/// swtpm's server socket (TCP or Unix): read the header, then as many bytes as it announces.
struct StreamTransport<S> {
    stream: S,
    address: String,
}

impl<S: Read + Write + Send> Transport for StreamTransport<S> {
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let address = self.address.clone();
        let io = |op, source| TpmError::Io {
            address: address.clone(),
            op,
            source,
        };
        self.stream
            .write_all(command)
            .map_err(|e| io("sending a command", e))?;
        let mut buf = vec![0u8; HEADER_LEN];
        read_full(&mut self.stream, &mut buf).map_err(|e| io("reading a response header", e))?;
        let size = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
        if !(HEADER_LEN..=MAX_RESPONSE).contains(&size) {
            // Let the framing check report it; do not try to read an absurd amount.
            return Ok(buf);
        }
        buf.resize(size, 0);
        let got = read_some(&mut self.stream, &mut buf[HEADER_LEN..])
            .map_err(|e| io("reading a response", e))?;
        buf.truncate(HEADER_LEN + got);
        Ok(buf)
    }
    fn address(&self) -> String {
        self.address.clone()
    }
    fn is_simulator(&self) -> bool {
        true
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<()> {
    let got = read_some(r, buf)?;
    if got < buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("connection closed after {got} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}

/// Reads until `buf` is full or the peer closes; returns how much was read.
fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        for text in [
            "/dev/tpmrm0",
            "tcp://127.0.0.1:2321",
            "unix:///run/swtpm.sock",
        ] {
            let a: Address = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        assert_eq!(
            "tcp://127.0.0.1:2321".parse::<Address>(),
            Ok(Address::Tcp("127.0.0.1:2321".into()))
        );
        for bad in [
            "tpmrm0",
            "tcp://nohost",
            "tcp://:1",
            "tcp://h:99999",
            "unix://rel",
        ] {
            let e = bad.parse::<Address>().unwrap_err();
            assert!(e.message.contains(bad) && e.fix.contains("tcp://"), "{e}");
        }
    }
}
