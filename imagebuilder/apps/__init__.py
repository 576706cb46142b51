"""Java apps in the shapes people ship them: detection (:mod:`.detect`) into a
:class:`~.shape.Shape`, a thin jar's ``Class-Path`` as the JVM reads it (:mod:`.classpath`)
taken only from the app's directory (:mod:`.thin`), capped reading of untrusted jars
(:mod:`.archive`), one read of every class the app can load (:mod:`.scan`) and the JDK modules
that follows from it (:mod:`.modules`).
"""
