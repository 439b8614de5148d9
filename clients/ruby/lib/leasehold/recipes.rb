# frozen_string_literal: true

module Leasehold
  # The high-level objects, the same over every backend: {Client} and {Memory}
  # include this, and implement the primitive calls the objects use
  # (+acquire_lock+, +extend_lock+, +release_lock+, +register_name+, ...).
  module Recipes
    # A {Lock} on +key+ (not yet acquired). Options: see {Lock#initialize}.
    def lock(key, **options)
      Lock.new(self, key, **options)
    end

    # Acquire +key+, run the block while holding it, release (Locker.run); see
    # {Lock#with_lock}. Options: see {Lock#initialize}.
    def with_lock(key, **options, &block)
      lock(key, **options).with_lock(&block)
    end

    # A {Semaphore} slot on +key+ admitting +limit+ holders (not yet acquired).
    def semaphore(key, limit, **options)
      Semaphore.new(self, key, limit, **options)
    end

    # Register +name+ with +value+ now and keep it renewed; returns the held
    # {Name} ({Name#resign} gives it up). Raises {NameTakenError} if it is taken
    # (after queueing up to +wait+ seconds). Options: see {Lock#initialize}.
    def register(name, value = nil, ttl: 30, **options)
      registration = Name.new(self, name, value, ttl: ttl, **options)
      registration.register
      registration
    end

    # An election for +name+ in which this process campaigns with +value+ (not yet
    # campaigning): call {Name#lead} or {Name#campaign}. Options: see {Lock#initialize}.
    def election(name, value = nil, **options)
      Name.new(self, name, value, **options)
    end

    # Who leads +name+ now: its record, or nil (same as +whereis+).
    def leader(name)
      whereis(name)
    end
  end
end
