# frozen_string_literal: true

require "logger"

# Ruby client for leasehold: locks, leases, leader election and a name registry
# replicated with Raft. Start with {Leasehold::Client} (a cluster over HTTP) or
# {Leasehold::Memory} (in-process, for tests); both hand out {Leasehold::Lock},
# {Leasehold::Semaphore} and {Leasehold::Name} objects with the same interface.
module Leasehold
  class << self
    # The logger used by clients and locks that were not given one.
    # Defaults to warnings and errors on $stderr (lost locks, failing renewals).
    def logger
      @logger ||= Logger.new($stderr, level: Logger::WARN, progname: "leasehold")
    end

    # Replace the global logger (e.g. +Logger.new(IO::NULL)+ to silence the gem).
    attr_writer :logger
  end
end

require_relative "leasehold/version"
require_relative "leasehold/errors"
require_relative "leasehold/deadline"
require_relative "leasehold/renewer"
require_relative "leasehold/lock"
require_relative "leasehold/semaphore"
require_relative "leasehold/name"
require_relative "leasehold/recipes"
require_relative "leasehold/client"
require_relative "leasehold/memory"
