# ---------------------------------------------------------------- Proxmox

variable "proxmox_endpoint" {
  description = "Proxmox VE API URL, e.g. https://pve.lan:8006/."
  type        = string
  validation {
    condition     = can(regex("^https://[^/]+(:[0-9]+)?/?$", var.proxmox_endpoint))
    error_message = "proxmox_endpoint must be an https:// URL of the Proxmox VE API (scheme, host and optional port)."
  }
}

variable "proxmox_api_token" {
  description = "Proxmox VE API token, USER@REALM!TOKENID=SECRET. Pass it via TF_VAR_proxmox_api_token or a SOPS-encrypted tfvars file, never in a committed file."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^[^@\\s]+@[^!\\s]+![^=\\s]+=[0-9a-fA-F-]{36}$", var.proxmox_api_token))
    error_message = "proxmox_api_token must look like USER@REALM!TOKENID=UUID."
  }
}

variable "proxmox_insecure" {
  description = "Skip TLS verification of the Proxmox VE API (self-signed certificate)."
  type        = bool
  default     = false
}

variable "proxmox_node" {
  description = "Proxmox VE node that hosts the VM."
  type        = string
  default     = "pve"
}

variable "vm_id" {
  description = "Proxmox VM ID."
  type        = number
  default     = 100
  validation {
    condition     = var.vm_id >= 100 && var.vm_id <= 999999999 && floor(var.vm_id) == var.vm_id
    error_message = "vm_id must be an integer between 100 and 999999999."
  }
}

variable "vm_name" {
  description = "VM name, also the node's hostname."
  type        = string
  default     = "talos"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.vm_name))
    error_message = "vm_name must be a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "cpu_cores" {
  description = "vCPU cores."
  type        = number
  default     = 4
  validation {
    condition     = var.cpu_cores >= 2 && floor(var.cpu_cores) == var.cpu_cores
    error_message = "cpu_cores must be an integer of at least 2 (a Talos control plane needs 2)."
  }
}

variable "memory_mb" {
  description = "Memory in MiB."
  type        = number
  default     = 16384
  validation {
    condition     = var.memory_mb >= 4096
    error_message = "memory_mb must be at least 4096 (a single-node Talos cluster with Flux needs 4 GiB)."
  }
}

variable "disk_gb" {
  description = "System disk size in GiB."
  type        = number
  default     = 100
  validation {
    condition     = var.disk_gb >= 20
    error_message = "disk_gb must be at least 20."
  }
}

variable "vm_datastore" {
  description = "Datastore for the system disk, the EFI vars disk and the TPM state."
  type        = string
  default     = "local-lvm"
}

variable "iso_datastore" {
  description = "Datastore (content type iso) that receives the Talos image."
  type        = string
  default     = "local"
}

variable "network_bridge" {
  description = "Proxmox bridge of the VM's network interface."
  type        = string
  default     = "vmbr0"
}

variable "mac_address" {
  description = "Fixed MAC address of the VM (the DHCP server reserves an address for it)."
  type        = string
  default     = "BC:24:11:CA:FE:01"
  validation {
    condition     = can(regex("^([0-9A-F]{2}:){5}[0-9A-F]{2}$", var.mac_address))
    error_message = "mac_address must be six upper-case hex octets separated by ':', e.g. BC:24:11:CA:FE:01."
  }
}

# ---------------------------------------------------------------- Talos image
# Versions (Talos, Kubernetes, the extension) and the installer's repository are not variables:
# image-factory/versions.yaml holds them for the Makefile, image-factory, Renovate and Terraform.

variable "talos_iso_attached" {
  description = "Keep our SecureBoot ISO in the VM's CD-ROM drive. Needed until Talos has installed itself to disk (the first apply); set it to false afterwards, in the apply that sets sops_age_key_sealed (README, step 6; Terraform refuses a sealed key while the ISO is attached): the drive is emptied in place and the uploaded ISO deleted, so nobody can boot our signed image with another machine configuration. Set it to true again only to reinstall from scratch."
  type        = bool
  default     = true
}

variable "install_disk" {
  description = "Disk Talos installs to."
  type        = string
  default     = "/dev/sda"
  validation {
    condition     = startswith(var.install_disk, "/dev/")
    error_message = "install_disk must be a device path under /dev/."
  }
}

# ---------------------------------------------------------------- cluster and network

variable "cluster_name" {
  description = "Talos/Kubernetes cluster name."
  type        = string
  default     = "homelab"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be lower-case letters, digits and '-'."
  }
}

variable "node_ip" {
  description = "Static IPv4 address of the node (also the Kubernetes and Talos API endpoint)."
  type        = string
  default     = "192.168.20.100"
  validation {
    condition     = can(cidrhost("${var.node_ip}/32", 0))
    error_message = "node_ip must be an IPv4 address."
  }
}

variable "node_prefix_length" {
  description = "Prefix length of the node's network."
  type        = number
  default     = 24
  validation {
    condition     = var.node_prefix_length >= 8 && var.node_prefix_length <= 30
    error_message = "node_prefix_length must be between 8 and 30."
  }
}

variable "gateway" {
  description = "Default gateway (must be in the node's network)."
  type        = string
  default     = "192.168.20.1"
  validation {
    condition     = can(cidrhost("${var.gateway}/32", 0))
    error_message = "gateway must be an IPv4 address."
  }
}

variable "nameservers" {
  description = "DNS resolvers of the node."
  type        = list(string)
  default     = ["192.168.20.1"]
  validation {
    condition     = length(var.nameservers) > 0 && alltrue([for ns in var.nameservers : can(cidrhost("${ns}/32", 0))])
    error_message = "nameservers must be a non-empty list of IPv4 addresses."
  }
}

# ---------------------------------------------------------------- bootstrap agent and Flux

variable "flux_git_url" {
  description = "Git repository Flux syncs from (must match kubernetes/flux-system/gotk-sync.yaml)."
  type        = string
  default     = "https://github.com/catinthehack/homelab"
  validation {
    condition     = can(regex("^(https|ssh)://", var.flux_git_url))
    error_message = "flux_git_url must be an https:// or ssh:// URL."
  }
}

variable "flux_git_branch" {
  description = "Branch Flux syncs from (must match kubernetes/flux-system/gotk-sync.yaml)."
  type        = string
  default     = "main"
}

variable "sops_age_key_sealed" {
  description = "The SOPS age identity encrypted to the node's TPM recipient (age armor, from `age -a -r <tpm recipient> .age-key.txt`). Empty on the very first apply, when the TPM recipient is not known yet. Setting or changing it reboots the node once (the agent unseals at boot)."
  type        = string
  default     = ""
  validation {
    condition     = var.sops_age_key_sealed == "" || (startswith(trimspace(var.sops_age_key_sealed), "-----BEGIN AGE ENCRYPTED FILE-----") && endswith(trimspace(var.sops_age_key_sealed), "-----END AGE ENCRYPTED FILE-----"))
    error_message = "sops_age_key_sealed must be empty or an age-armored file (-----BEGIN AGE ENCRYPTED FILE----- ... -----END AGE ENCRYPTED FILE-----). Never pass the plain AGE-SECRET-KEY-1... line."
  }
}

variable "tpm_recipient" {
  description = "The node's TPM age recipient, as `bootstrap-agent status` shows it at the first boot (or `bootstrap-agent tpm enroll` prints it). Pinned in the agent's configuration: a TPM that yields another one is refused. Empty until the first boot has shown it."
  type        = string
  default     = ""
  validation {
    condition     = var.tpm_recipient == "" || can(regex("^age1[02-9ac-hj-np-z]{58}$", var.tpm_recipient))
    error_message = "tpm_recipient must be empty or an age X25519 recipient (age1 followed by 58 bech32 characters), as the agent's status shows it."
  }
}

variable "tpm_salt_key_name" {
  description = "The name of the node's TPM salt key (68 hex digits, 000b...), as `bootstrap-agent status` shows it at the first boot. Pinned so that a TPM bus interposer cannot substitute its own key. Empty until the first boot has shown it."
  type        = string
  default     = ""
  validation {
    condition     = var.tpm_salt_key_name == "" || can(regex("^000b[0-9a-f]{64}$", var.tpm_salt_key_name))
    error_message = "tpm_salt_key_name must be empty or 000b followed by 64 lower-case hex digits, as the agent's status shows it."
  }
}

variable "sops_age_recipient" {
  description = "age recipient (public key) the exported talosconfig and kubeconfig are encrypted to: `age-keygen -y .age-key.txt`."
  type        = string
  validation {
    condition     = can(regex("^age1[02-9ac-hj-np-z]{58}$", var.sops_age_recipient))
    error_message = "sops_age_recipient must be an age X25519 recipient (age1 followed by 58 bech32 characters)."
  }
}

variable "export_dir" {
  description = "Directory that receives talosconfig.enc.yaml and kubeconfig.enc.yaml."
  type        = string
  default     = ".."
}
