//! How command bytes reach the TPM: the kernel's resource manager device, or swtpm over TCP or a
//! Unix socket. All speak raw TPM 2.0 command/response bytes with no extra framing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::error::TpmError;
use super::wire::{HEADER_LEN, MAX_RESPONSE};

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

/// Where the TPM is, parsed from the settings string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Device(String),
    Tcp(String),
    Unix(String),
}

impl Address {
    pub fn parse(s: &str) -> Result<Self, TpmError> {
        if let Some(hp) = s.strip_prefix("tcp://") {
            if hp.is_empty() || !hp.contains(':') {
                return Err(TpmError::BadAddress(s.to_string()));
            }
            Ok(Address::Tcp(hp.to_string()))
        } else if let Some(p) = s.strip_prefix("unix://") {
            if !p.starts_with('/') {
                return Err(TpmError::BadAddress(s.to_string()));
            }
            Ok(Address::Unix(p.to_string()))
        } else if s.starts_with('/') {
            Ok(Address::Device(s.to_string()))
        } else {
            Err(TpmError::BadAddress(s.to_string()))
        }
    }
}

/// Opens the transport for an address string.
pub fn open(address: &str) -> Result<Box<dyn Transport>, TpmError> {
    let no_device = |source| TpmError::NoDevice {
        address: address.to_string(),
        source,
    };
    match Address::parse(address)? {
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
        assert_eq!(
            Address::parse("/dev/tpmrm0").ok(),
            Some(Address::Device("/dev/tpmrm0".into()))
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:2321").ok(),
            Some(Address::Tcp("127.0.0.1:2321".into()))
        );
        assert_eq!(
            Address::parse("unix:///run/swtpm.sock").ok(),
            Some(Address::Unix("/run/swtpm.sock".into()))
        );
        assert!(Address::parse("tpmrm0").is_err());
        assert!(Address::parse("tcp://nohost").is_err());
    }
}
