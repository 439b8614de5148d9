# frozen_string_literal: true

require_relative "lib/leasehold/version"

Gem::Specification.new do |spec|
  spec.name = "leasehold"
  spec.version = Leasehold::VERSION
  spec.summary = "Ruby client for leasehold: locks, leases, leader election and a name registry"
  spec.description = <<~TEXT
    A client for the leasehold lock service (a Raft-replicated lease store): locks with
    fencing tokens and background renewal under a client deadline, FIFO blocking acquires,
    leader election, a name registry, semaphores and leases, with endpoint failover and
    idempotent retries. Includes an in-process backend for tests. Standard library only.
  TEXT
  spec.authors = ["leasehold contributors"]
  spec.license = "Apache-2.0"
  spec.required_ruby_version = ">= 3.0"
  spec.files = Dir["lib/**/*.rb"] + ["README.md"]
  spec.require_paths = ["lib"]
  spec.add_development_dependency "minitest", "~> 5.15"
  spec.add_development_dependency "rake", "~> 13.0"
end
