from identity.service import service

service.main()
