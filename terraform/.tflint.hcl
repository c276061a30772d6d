# tflint configuration (`tflint --chdir=terraform`).
plugin "terraform" {
  enabled = true
  preset  = "recommended"
}
